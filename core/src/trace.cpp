#include "conveyor/core/trace.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <random>

namespace conveyor {

namespace {

bool is_lower_hex(std::string_view text) {
    return std::all_of(text.begin(), text.end(),
                       [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

bool all_zero(std::string_view text) {
    return text.find_first_not_of('0') == std::string_view::npos;
}

/// A generator per thread, seeded with 256 bits: a 32-bit seed would, across enough pods, threads and restarts,
/// repeat, and two generators with one seed hand out the same trace ids.
std::mt19937_64 seeded_generator() {
    std::random_device device;
    std::seed_seq seed{device(), device(), device(), device(), device(), device(), device(), device()};
    return std::mt19937_64(seed);
}

/// `digits` random lower-hex digits, never all zero (the specification's invalid value).
std::string random_hex(std::size_t digits) {
    thread_local std::mt19937_64 generator = seeded_generator();
    std::string id;
    do {
        id.clear();
        while (id.size() < digits) {
            id += fmt::format("{:016x}", generator());
        }
        id.resize(digits);
    } while (all_zero(id));
    return id;
}

}  // namespace

std::optional<Traceparent> Traceparent::parse(std::string_view header) {
    // <version>-<32 hex>-<16 hex>-<2 hex>. A later version may append fields after a '-'; its first four are read
    // as version 00's, as the specification asks of a version-00 reader.
    constexpr std::size_t kLength = 55;
    if (header.size() < kLength || header[2] != '-' || header[35] != '-' || header[52] != '-') {
        return std::nullopt;
    }
    const auto version = header.substr(0, 2);
    if (!is_lower_hex(version) || version == "ff" ||
        (version == "00" ? header.size() != kLength : header.size() > kLength && header[kLength] != '-')) {
        return std::nullopt;
    }
    Traceparent parsed{std::string(header.substr(3, 32)), std::string(header.substr(36, 16)),
                       std::string(header.substr(53, 2))};
    if (!is_lower_hex(parsed.trace_id) || !is_lower_hex(parsed.parent_id) || !is_lower_hex(parsed.flags) ||
        all_zero(parsed.trace_id) || all_zero(parsed.parent_id)) {
        return std::nullopt;
    }
    return parsed;
}

TraceContext TraceContext::start_span(std::string_view incoming) {
    if (auto parent = Traceparent::parse(incoming)) {
        // Only the sampled flag is defined; flags this version does not know are not passed on.
        const auto sampled = std::stoul(parent->flags, nullptr, 16) & 0x01U;
        return {std::move(parent->trace_id), random_hex(16), std::move(parent->parent_id),
                fmt::format("{:02x}", sampled)};
    }
    return {random_hex(32), random_hex(16), {}, "01"};
}

std::string TraceContext::traceparent() const {
    return fmt::format("00-{}-{}-{}", trace_id, span_id, flags);
}

bool TraceContext::sampled() const noexcept {
    // The sampled flag is the flags byte's lowest bit: the last hex digit's.
    if (flags.size() != 2 || !is_lower_hex(flags)) {
        return false;
    }
    const char low = flags.back();
    const int value = low <= '9' ? low - '0' : low - 'a' + 10;
    return (value & 1) != 0;
}

ScopedSpan::ScopedSpan(SpanSink* sink, const TraceContext& parent, std::string name, SpanKind kind)
    : sink_(parent.sampled() ? sink : nullptr) {
    span_.context = TraceContext::start_span(parent.traceparent());
    span_.name = std::move(name);
    span_.kind = kind;
    span_.start = std::chrono::system_clock::now();
}

void ScopedSpan::set(std::string key, std::variant<std::string, std::int64_t, bool> value) {
    if (sink_ != nullptr) {
        span_.attributes.emplace_back(std::move(key), std::move(value));
    }
}

void ScopedSpan::fail(std::string message) {
    span_.failed = true;
    span_.status_message = std::move(message);
}

void ScopedSpan::end() noexcept {
    if (ended_) {
        return;
    }
    ended_ = true;
    if (sink_ != nullptr) {
        span_.end = std::chrono::system_clock::now();
        sink_->record(std::move(span_));
    }
}

}  // namespace conveyor
