#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/json/object.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conveyor/core/job.hpp"
#include "conveyor/jobs/order_status.hpp"

/// The order aggregate as the saga's jobs see it: its state machine, and the one way its state changes (a
/// locked row, a legal transition, events appended with the next versions).
namespace conveyor::jobs {

/// An order row locked by the job's transaction, with its customer.
struct LockedOrder {
    std::string id;
    OrderStatus status = OrderStatus::placed;
    std::int64_t version = 0;
    std::string customer_id;
    std::string customer_email;
    std::string customer_name;
    std::string currency;
    std::int64_t total_cents = 0;
    /// Its month has been archived (orders.archive): its events are in shop.events_archive and it changes no more.
    bool archived = false;
};

struct DomainEvent {
    std::string type;
    boost::json::object data;
};

/// Locks the order's row (FOR UPDATE) until the transaction ends; nullopt if there is no such order.
boost::asio::awaitable<std::optional<LockedOrder>> lock_order(pg::Transaction& transaction, std::string_view order_id);

/// Moves a locked order to `to` (or keeps its status, when `to` is it) and appends `events` with the versions after
/// its own; returns the events' ids in version order. Throws PermanentError for a transition the state machine
/// refuses, and for an archived order.
boost::asio::awaitable<std::vector<std::int64_t>> advance_order(pg::Transaction& transaction, LockedOrder& order,
                                                                OrderStatus to, std::string_view reason,
                                                                const std::vector<DomainEvent>& events);

/// Emits one projections.update for the last of the events, so the read models follow: updating for an event
/// applies every earlier event of its order too, so one job per step of the saga is enough.
void emit_projection_update(JobContext& context, const std::vector<std::int64_t>& event_ids);

/// Emits emails.send with a dedupe key naming the order and the template: one such email per order, ever.
void emit_order_email(JobContext& context, std::string_view template_name, const LockedOrder& order,
                      boost::json::object data);

/// The compensation of a saga step named `step` (JobOptions::compensate): when it gives up, orders.cancel cancels
/// the order its payload names (or refunds it, if it was paid), with what ended the step as the reason.
[[nodiscard]] Compensation cancel_order_when(std::string_view step);

/// The DeadLetter for a transition the state machine refuses.
[[nodiscard]] DeadLetter illegal_transition(const LockedOrder& order, OrderStatus to);

}  // namespace conveyor::jobs
