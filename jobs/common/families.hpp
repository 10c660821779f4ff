#pragma once

#include <simdjson.h>

#include <optional>
#include <string>

#include "conveyor/jobs/jobs.hpp"

/// Each family registers its job types; register_all (jobs/common/register.cpp) calls them all.
namespace conveyor::jobs {

void register_order_jobs(JobRegistry& registry, const Settings& settings);
void register_inventory_jobs(JobRegistry& registry);
void register_payment_jobs(JobRegistry& registry, const Settings& settings, prometheus::Registry& metrics,
                           boost::asio::any_io_executor executor);
void register_email_jobs(JobRegistry& registry, const Settings& settings);
/// emails.prune: needs no client, so payload_validators() registers it as it is.
void register_email_retention_jobs(JobRegistry& registry);
/// orders.archive, registered by register_order_jobs.
void register_archive_jobs(JobRegistry& registry);
void register_projection_jobs(JobRegistry& registry);

/// The validators of the families whose registration needs outside clients, for payload_validators().
[[nodiscard]] std::optional<std::string> validate_charge(simdjson::dom::element payload);
[[nodiscard]] std::optional<std::string> validate_refund(simdjson::dom::element payload);
[[nodiscard]] std::optional<std::string> validate_send_email(simdjson::dom::element payload);

}  // namespace conveyor::jobs
