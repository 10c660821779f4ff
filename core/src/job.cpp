#include "conveyor/core/job.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "conveyor/core/job_headers.hpp"
#include "conveyor/core/json.hpp"
#include "conveyor/core/topology.hpp"

namespace conveyor {

namespace {

/// Derived ids must fit the wire contract's 128 bytes whatever the parent's id is.
std::string emitted_message_id(std::string_view job_id, std::size_t index) {
    auto id = fmt::format("{}/{}", job_id, index);
    if (id.size() <= kMaxJobIdBytes) {
        return id;
    }
    std::uint64_t hash = 0xcbf29ce484222325ULL;
    for (const char c : job_id) {
        hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
    }
    return fmt::format("{:016x}/{}", hash, index);
}

}  // namespace

pg::Transaction& JobContext::transaction() const {
    if (transaction_ == nullptr) {
        throw std::logic_error(
            fmt::format("job type {} has no open transaction: register it with TransactionMode::per_job, or call "
                        "begin_transaction() first (TransactionMode::on_demand)",
                        envelope_.type));
    }
    return *transaction_;
}

boost::asio::awaitable<pg::Transaction*> JobContext::begin_transaction() {
    if (transaction_ != nullptr) {
        co_return transaction_;
    }
    if (!opener_) {
        throw std::logic_error(fmt::format(
            "job type {} cannot begin a transaction: register it with TransactionMode::on_demand", envelope_.type));
    }
    auto* opened = co_await opener_();
    transaction_ = opened;
    co_return opened;
}

pg::Pool& JobContext::database() const {
    if (database_ == nullptr) {
        throw std::logic_error(fmt::format("job type {} runs without a database", envelope_.type));
    }
    return *database_;
}

void JobContext::progress(double fraction, std::string_view note) {
    constexpr auto kReportEvery = std::chrono::seconds(1);
    constexpr std::size_t kMaxNoteBytes = 256;
    fraction = std::isfinite(fraction) ? std::clamp(fraction, 0.0, 1.0) : 0.0;
    last_progress_.emplace(fraction, std::string(note.substr(0, kMaxNoteBytes)));
    const auto now = std::chrono::steady_clock::now();
    if (progress_reporter_ && now - last_reported_ >= kReportEvery) {
        last_reported_ = now;
        progress_reporter_(fraction, last_progress_->second);
    }
}

namespace {

/// A job emitted on behalf of `envelope`'s job, checked as the wire contract wants it.
OutboxMessage follow_up_message(const Envelope& envelope, const TraceContext& trace, std::string message_id,
                                FollowUp job) {
    const auto& families = topology::default_families();
    const auto family = std::string_view(job.type).substr(0, job.type.find('.'));
    if (!is_valid_job_type(job.type) || std::find(families.begin(), families.end(), family) == families.end()) {
        throw PermanentError(
            fmt::format("cannot emit job type '{}': expected <family>.<action> of a known family", job.type));
    }
    thread_local simdjson::dom::parser parser;
    auto parsed = parser.parse(job.payload);
    if (parsed.error() != simdjson::SUCCESS || !parsed.value_unsafe().is_object()) {
        throw PermanentError(fmt::format("cannot emit {}: the payload is not a JSON object", job.type));
    }
    if (const auto violation = json::check(parsed.value_unsafe())) {
        throw PermanentError(fmt::format("cannot emit {}: {}", job.type, violation->message));
    }
    OutboxMessage message;
    message.message_id = std::move(message_id);
    message.exchange = std::string(topology::kJobsExchange);
    message.routing_key = std::move(job.type);
    // The emitted job belongs to the same business flow: it keeps the correlation id, or starts one here.
    message.correlation_id = envelope.correlation_id.empty() ? envelope.job_id : envelope.correlation_id;
    // The emitted job is a child of this job's span, in the same trace.
    message.traceparent = trace.traceparent();
    message.body = std::move(job.payload);
    return message;
}

}  // namespace

void JobContext::emit(std::string type, std::string payload, std::chrono::seconds delay) {
    if (transaction_ == nullptr && !opener_) {
        // Without the outbox an emitted job could be published though nothing committed, or lost.
        throw std::logic_error(fmt::format(
            "job type {} emits jobs but has no transaction: register it with TransactionMode::per_job or on_demand",
            envelope_.type));
    }
    if (delay < std::chrono::seconds::zero() || delay > topology::kMaxDelay) {
        throw PermanentError(fmt::format("cannot emit {} {} s later: the delay ladder holds 0 to {} s", type,
                                         delay.count(), topology::kMaxDelay.count()));
    }
    auto message = follow_up_message(envelope_, trace_, emitted_message_id(envelope_.job_id, emitted_.size()),
                                     {std::move(type), std::move(payload)});
    if (delay > std::chrono::seconds::zero()) {
        message.routing_key = topology::delay_routing_key(delay, message.routing_key);
        message.exchange = topology::delay_entry_exchange();
    }
    emitted_.push_back(std::move(message));
}

std::vector<OutboxMessage> compensation_messages(const Envelope& envelope, const TraceContext& trace,
                                                 std::vector<FollowUp> jobs) {
    // Apart from the ids an attempt emits (job/0, job/1 …): a compensation follows a failed attempt, which emitted
    // nothing that was published.
    const auto base = fmt::format("{}!compensation", envelope.job_id);
    const auto now =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch());
    std::vector<OutboxMessage> messages;
    for (auto& job : jobs) {
        messages.push_back(
            follow_up_message(envelope, trace, emitted_message_id(base, messages.size()), std::move(job)));
        messages.back().enqueued_at_ms = now.count();
    }
    return messages;
}

boost::asio::awaitable<void> JobContext::write_outbox() {
    if (emitted_.empty()) {
        co_return;
    }
    // One statement for all of them: a saga step emitting four jobs pays one round trip, not four.
    std::vector<std::string_view> ids;
    std::vector<std::string_view> exchanges;
    std::vector<std::string_view> routing_keys;
    std::vector<std::string_view> correlation_ids;
    std::vector<std::string_view> traceparents;
    std::vector<std::string_view> bodies;
    for (const auto& message : emitted_) {
        ids.push_back(message.message_id);
        exchanges.push_back(message.exchange);
        routing_keys.push_back(message.routing_key);
        correlation_ids.push_back(message.correlation_id);
        traceparents.push_back(message.traceparent);
        bodies.push_back(message.body);
    }
    // Named: g++ 12 mishandles non-trivial temporaries inside a co_await expression.
    const auto id_array = pg::text_array(ids);
    const auto exchange_array = pg::text_array(exchanges);
    const auto routing_key_array = pg::text_array(routing_keys);
    const auto correlation_array = pg::text_array(correlation_ids);
    const auto traceparent_array = pg::text_array(traceparents);
    const auto body_array = pg::text_array(bodies);
    const auto rows = co_await transaction().query(
        "INSERT INTO conveyor.outbox (message_id, exchange, routing_key, correlation_id, traceparent, body) "
        "SELECT m.id, m.exchange, m.routing_key, m.correlation_id, NULLIF(m.traceparent, ''), m.body "
        "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY "
        "AS m(id, exchange, routing_key, correlation_id, traceparent, body, position) ORDER BY m.position "
        "RETURNING id, (extract(epoch FROM created_at) * 1000)::bigint, message_id",
        id_array, exchange_array, routing_key_array, correlation_array, traceparent_array, body_array);
    for (int row = 0; row < rows.rows(); ++row) {
        const auto message_id = rows.text(row, 2);
        const auto written = std::find_if(emitted_.begin(), emitted_.end(), [&](const OutboxMessage& message) {
            return message.message_id == message_id;
        });
        if (written != emitted_.end()) {
            written->row_id = rows.integer(row, 0);
            written->enqueued_at_ms = rows.integer(row, 1);
        }
    }
}

std::chrono::milliseconds RetryPolicy::ceiling(std::uint32_t failed_attempt) const noexcept {
    // Doubling stops once it passes the cap, so a large attempt number cannot overflow.
    auto delay = base_delay;
    for (std::uint32_t n = 1; n < failed_attempt && delay < max_delay; ++n) {
        delay *= 2;
    }
    return std::min(delay, max_delay);
}

std::chrono::milliseconds RetryPolicy::delay_after(std::uint32_t failed_attempt, std::chrono::milliseconds requested,
                                                   double unit_random) const noexcept {
    const auto jittered = std::chrono::milliseconds(static_cast<std::int64_t>(
        static_cast<double>(ceiling(failed_attempt).count()) * std::clamp(unit_random, 0.0, 1.0)));
    return std::max(jittered, requested);
}

void JobRegistry::add(std::string type, JobHandler handler, JobOptions options) {
    if (!is_valid_job_type(type)) {
        throw std::invalid_argument(fmt::format("invalid job type '{}': expected <family>.<action>", type));
    }
    if (!handler) {
        throw std::invalid_argument(fmt::format("job type '{}' has no handler", type));
    }
    if (definitions_.contains(type)) {
        throw std::invalid_argument(fmt::format("job type '{}' is registered twice", type));
    }
    auto key = type;
    definitions_.emplace(std::move(key), JobDefinition{std::move(type), std::move(handler), std::move(options)});
}

const JobDefinition* JobRegistry::find(std::string_view type) const noexcept {
    const auto it = definitions_.find(type);
    return it == definitions_.end() ? nullptr : &it->second;
}

std::vector<std::string> JobRegistry::types() const {
    std::vector<std::string> names;
    names.reserve(definitions_.size());
    for (const auto& [name, definition] : definitions_) {
        names.push_back(name);
    }
    return names;
}

std::vector<std::string> JobRegistry::types_of_family(std::string_view family) const {
    std::vector<std::string> names;
    for (const auto& [name, definition] : definitions_) {
        if (name.size() > family.size() && name.starts_with(family) && name[family.size()] == '.') {
            names.push_back(name);
        }
    }
    return names;
}

amqp::Message outbox_to_message(const OutboxMessage& row) {
    amqp::Message message;
    message.exchange = row.exchange;
    message.routing_key = row.routing_key;
    message.body = row.body;
    auto& properties = message.properties;
    properties.content_type = "application/json";
    properties.message_id = row.message_id;
    properties.correlation_id = row.correlation_id;
    set_enqueued_at(properties, row.enqueued_at_ms);
    if (!row.traceparent.empty()) {
        amqp::set_header(properties.headers, "traceparent", row.traceparent);
    }
    if (!row.priority.empty() && row.priority != topology::band_name(topology::Band::normal)) {
        amqp::set_header(properties.headers, topology::kPriorityHeader, row.priority);
    }
    if (!row.unique_key.empty()) {
        amqp::set_header(properties.headers, job_headers::kUniqueKey, row.unique_key);
        amqp::set_header(properties.headers, job_headers::kUniqueFor, row.unique_for);
    }
    if (!row.batch.empty()) {
        amqp::set_header(properties.headers, job_headers::kBatch, row.batch);
    }
    return message;
}

}  // namespace conveyor
