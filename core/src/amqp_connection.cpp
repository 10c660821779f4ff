#include <amqp.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/system_executor.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>

#include "amqp_codec.hpp"
#include "conveyor/core/amqp.hpp"
#include "conveyor/core/logging.hpp"
#include "unsettled.hpp"

namespace conveyor::amqp {
namespace asio = boost::asio;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;
using codec::bytes_of;
using codec::to_string;

namespace {

constexpr amqp_channel_t kControlChannel = 1;
constexpr amqp_channel_t kPublishChannel = 2;
constexpr amqp_channel_t kFirstConsumerChannel = 3;
constexpr int kFrameMax = 131072;
constexpr std::size_t kBodyPadding = 64;
// How long stop() waits for the broker's connection.close-ok; a shutdown must not hang on a stalled broker.
constexpr std::chrono::milliseconds kCloseTimeout{2000};
// Frames handled before the read loop yields, so queued acks and publishes are not starved by a busy consumer.
constexpr int kFramesPerTurn = 512;
constexpr std::uint16_t kPreconditionFailed = 406;

// Boost's error_category has a non-virtual destructor by design; this final class is only ever a static.
// NOLINTNEXTLINE(cppcoreguidelines-virtual-class-destructor)
class ErrorCategory final : public boost::system::error_category {
  public:
    const char* name() const noexcept override { return "conveyor.amqp"; }
    std::string message(int value) const override {
        switch (static_cast<Errc>(value)) {
            case Errc::nacked:
                return "broker nacked the message";
            case Errc::unroutable:
                return "message unroutable: no queue bound for its routing key";
            case Errc::connection_lost:
                return "connection lost before the broker confirmed";
            case Errc::connection_failed:
                return "could not connect to the broker";
            case Errc::stopped:
                return "connection stopped";
            case Errc::timed_out:
                return "the broker did not confirm the publish before its deadline";
            case Errc::not_found:
                return "not found";
        }
        return "unknown AMQP error";
    }
};

/// A failure of the session; the session loop logs it once and reconnects.
class SessionError : public std::runtime_error {
    using std::runtime_error::runtime_error;
};

timeval to_timeval(std::chrono::milliseconds duration) {
    const auto count = duration.count();
    return timeval{static_cast<time_t>(count / 1000), static_cast<suseconds_t>((count % 1000) * 1000)};
}

std::string describe_reply(const amqp_rpc_reply_t& reply) {
    switch (reply.reply_type) {
        case AMQP_RESPONSE_NORMAL:
            return "ok";
        case AMQP_RESPONSE_NONE:
            return "no reply";
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            return amqp_error_string2(reply.library_error);
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
                const auto* close = static_cast<const amqp_connection_close_t*>(reply.reply.decoded);
                return fmt::format("broker closed the connection: {} {}", close->reply_code,
                                   to_string(close->reply_text));
            }
            if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
                const auto* close = static_cast<const amqp_channel_close_t*>(reply.reply.decoded);
                return fmt::format("broker closed the channel: {} {}", close->reply_code, to_string(close->reply_text));
            }
            return fmt::format("unexpected broker method 0x{:08x}", reply.reply.id);
    }
    return "unknown reply";
}

void check_reply(amqp_connection_state_t conn, std::string_view what) {
    const auto reply = amqp_get_rpc_reply(conn);
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        throw SessionError(fmt::format("{}: {}", what, describe_reply(reply)));
    }
}

void check_status(int status, std::string_view what) {
    if (status != AMQP_STATUS_OK) {
        throw SessionError(fmt::format("{}: {}", what, amqp_error_string2(status)));
    }
}

/// A completion handler waiting on the connection thread. It counts as work on the handler's own executor
/// until it completes, so an io_context with nothing else to do does not return while a publish is in flight.
template <typename Signature>
class PendingHandler {
  public:
    explicit PendingHandler(asio::any_completion_handler<Signature> handler)
        : work_(asio::prefer(asio::get_associated_executor(handler), asio::execution::outstanding_work.tracked)),
          handler_(std::move(handler)) {}

    /// Runs the handler on its own executor; the connection thread never runs it inline. Its cancellation slot is
    /// cleared there first, on the executor that may emit it, as Asio's own operations do.
    template <typename... Args>
    void complete(Args... args) && {
        auto executor = std::move(work_);
        executor.execute([handler = std::move(handler_), ... args = std::move(args)]() mutable {
            asio::get_associated_cancellation_slot(handler).clear();
            std::move(handler)(std::move(args)...);
        });
    }

  private:
    asio::any_completion_executor work_;
    asio::any_completion_handler<Signature> handler_;
};

using PendingError = PendingHandler<void(error_code)>;
using PendingCounts = PendingHandler<void(error_code, QueueCounts)>;

template <typename Handler, typename... Args>
void complete(Handler handler, Args... args) {
    std::move(handler).complete(std::move(args)...);
}

struct AckCommand {
    std::uint64_t session;
    amqp_channel_t channel;
    std::uint64_t delivery_tag;
};
struct RejectCommand {
    std::uint64_t session;
    amqp_channel_t channel;
    std::uint64_t delivery_tag;
    bool requeue;
};
struct PublishCommand {
    Message message;
    std::uint64_t id;
    std::optional<Clock::time_point> deadline;
    PendingError handler;
};
/// The caller cancelled the publish with this id.
struct AbandonPublishCommand {
    std::uint64_t id;
};
struct CancelConsumersCommand {
    PendingError handler;
};
struct QueueCountsCommand {
    std::string queue;
    PendingCounts handler;
    bool purge = false;  ///< queue.purge instead of a passive queue.declare
};
struct WaitReadyCommand {
    PendingError handler;
};
struct PauseConsumerCommand {
    std::string queue;
    bool paused;
};
using Command = std::variant<AckCommand, RejectCommand, PublishCommand, AbandonPublishCommand, CancelConsumersCommand,
                             QueueCountsCommand, WaitReadyCommand, PauseConsumerCommand>;

struct Consumer {
    ConsumerSpec spec;
    DeliveryChannel* deliveries;
    DeliveryBatch batch;  ///< assembled in this read turn, handed over at its end
    amqp_channel_t channel;
    std::string tag;
    bool subscribed = false;
    detail::Unsettled unsettled;
    bool has_new_acks = false;
    bool paused = false;  ///< wanted: not consuming, until resumed (held across reconnects)
    /// A basic.consume or basic.cancel sent without waiting and not answered yet.
    bool switching = false;
};

/// A message arriving as method, header and body frames.
struct IncomingContent {
    bool returned = false;  ///< basic.return rather than basic.deliver
    Delivery delivery;
    std::uint64_t body_size = 0;
    bool has_header = false;
};

struct OutstandingPublish {
    /// Empty once the caller gave up on it (deadline or cancellation); its confirm still arrives and is dropped.
    std::optional<PendingError> handler;
    std::uint64_t id;
    std::optional<Clock::time_point> deadline;
    /// Kept until the broker confirms it: a connection lost before then sends it again on the next one.
    Message message;
    Clock::time_point sent_at;
};

}  // namespace

const boost::system::error_category& error_category() noexcept {
    static const ErrorCategory category;
    return category;
}

error_code make_error_code(Errc e) noexcept {
    return {static_cast<int>(e), error_category()};
}

class Connection::Impl {
  public:
    Impl(ConnectionSettings settings, Topology topology)
        : settings_(std::move(settings)), topology_(std::move(topology)), log_prefix_("amqp[" + settings_.name + "]") {
        if (settings_.url.endpoints.empty()) {
            throw std::invalid_argument("AMQP connection settings name no broker");
        }
    }

    ~Impl() { stop(); }

    void add_consumer(ConsumerSpec spec, DeliveryChannel& deliveries) {
        const auto channel = static_cast<amqp_channel_t>(kFirstConsumerChannel + consumers_.size());
        consumers_.push_back(Consumer{std::move(spec), &deliveries, {}, channel, {}, false, {}, false, false, false});
    }

    void start() {
        asio::co_spawn(io_, session_loop(), log_failure(log_prefix_ + " session"));
        asio::co_spawn(io_, expire_publishes(), log_failure(log_prefix_ + " publish deadlines"));
        thread_ = std::thread([this] { io_.run(); });
    }

    void stop() {
        if (!thread_.joinable()) {
            return;
        }
        asio::post(io_, [this] {
            stopping_ = true;
            // Acks and rejects asked for before stop() go out before the close, so the broker does not requeue
            // deliveries that were settled (publishes still queued fail with Errc::stopped).
            drain_commands();
            if (conn_ != nullptr && connected()) {
                // Graceful close: the broker requeues our unacknowledged deliveries at once. A broker that does
                // not answer within kCloseTimeout requeues them when the socket closes instead.
                auto close_timeout = to_timeval(kCloseTimeout);
                amqp_set_rpc_timeout(conn_, &close_timeout);
                amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
            }
            fail_session("connection stopped");
            backoff_timer_.cancel();
            heartbeat_timer_.cancel();
            deadline_timer_.cancel();
        });
        work_.reset();
        thread_.join();
        // Anything enqueued while the thread was winding down fails now.
        std::vector<Command> leftovers;
        {
            std::lock_guard lock(commands_mutex_);
            stopped_ = true;
            leftovers.swap(commands_);
        }
        for (auto& command : leftovers) {
            fail_from_outside(std::move(command));
        }
    }

    /// Fails a command on a thread of the system executor: the caller may run on the handler's own executor,
    /// where completing it would resume the awaiting coroutine inside this call.
    static void fail_from_outside(Command command) {
        asio::post(asio::system_executor(),
                   [command = std::move(command)]() mutable { fail_command(command, Errc::stopped); });
    }

    void enqueue(Command command) {
        std::unique_lock lock(commands_mutex_);
        if (stopped_) {
            lock.unlock();
            fail_from_outside(std::move(command));
            return;
        }
        commands_.push_back(std::move(command));
        const bool post_drain = !std::exchange(drain_posted_, true);
        lock.unlock();
        if (post_drain) {
            asio::post(io_, [this] { drain_commands(); });
        }
    }

    std::atomic<std::uint64_t> next_publish_id_{0};
    std::atomic<std::uint64_t> live_session_{0};  ///< session_ while connected, 0 otherwise
    [[nodiscard]] bool connected() const noexcept { return live_session_ != 0; }
    std::atomic<bool> consuming_{false};
    std::atomic<bool> blocked_{false};

    std::string last_error() const {
        std::lock_guard lock(last_error_mutex_);
        return last_error_;
    }

    std::vector<QueueMismatch> queue_mismatches() const {
        std::lock_guard lock(last_error_mutex_);
        return mismatches_;
    }

  private:
    // ---- everything below runs on the connection thread ----

    asio::awaitable<void> session_loop() {
        unsigned failures = 0;
        while (!stopping_) {
            std::string failure;
            try {
                open_session();
                failures = 0;
                co_await read_loop();
            } catch (const std::exception& e) {
                failure = e.what();
            }
            const bool was_connected = connected();
            close_session();
            if (stopping_) {
                break;
            }
            if (session_error_ && failure.empty()) {
                failure = *session_error_;
            }
            set_last_error(failure);
            ++failures;
            if (settings_.max_connect_attempts != 0 && !was_connected && failures >= settings_.max_connect_attempts) {
                spdlog::error("{}: giving up on {} after {} attempts: {}", log_prefix_, settings_.url.redacted(),
                              failures, failure);
                gave_up_ = true;
                fail_waiting(Errc::connection_failed);
                break;
            }
            const auto delay = next_endpoint(failures);
            const auto next = settings_.url.redacted(current_endpoint());
            if (was_connected) {
                spdlog::warn("{}: connection lost: {}; reconnecting to {} in {} ms", log_prefix_, failure, next,
                             delay.count());
            } else {
                spdlog::warn("{}: {}; trying {} in {} ms", log_prefix_, failure, next, delay.count());
            }
            backoff_timer_.expires_after(delay);
            co_await backoff_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
        }
        if (stopping_) {
            fail_waiting(Errc::stopped);
        }
    }

    [[nodiscard]] const Endpoint& current_endpoint() const { return settings_.url.endpoints[endpoint_]; }

    /// Moves to the next broker and says how long to wait first: nothing while some node of the list is untried
    /// since the last success, the backoff once a whole round has failed.
    std::chrono::milliseconds next_endpoint(unsigned failures) {
        const auto count = settings_.url.endpoints.size();
        endpoint_ = (endpoint_ + 1) % count;
        if (failures % count != 0) {
            return std::chrono::milliseconds::zero();
        }
        return backoff(static_cast<unsigned>(failures / count));
    }

    std::chrono::milliseconds backoff(unsigned failures) {
        const auto exponent = std::min(failures, 16U);
        const auto cap =
            std::min<std::chrono::milliseconds>(settings_.reconnect_max, settings_.reconnect_min * (1LL << exponent));
        std::uniform_int_distribution<std::int64_t> jitter(settings_.reconnect_min.count(),
                                                           std::max(cap.count(), settings_.reconnect_min.count()));
        return std::chrono::milliseconds(jitter(random_));
    }

    void open_session() {
        session_error_.reset();
        conn_ = amqp_new_connection();
        if (conn_ == nullptr) {
            throw SessionError("out of memory creating the AMQP connection");
        }
        amqp_socket_t* socket = nullptr;
        if (settings_.url.tls) {
            socket = amqp_ssl_socket_new(conn_);
            if (socket == nullptr) {
                throw SessionError("cannot create TLS socket");
            }
            const bool verify = !settings_.tls_ca_file.empty();
            if (verify) {
                check_status(amqp_ssl_socket_set_cacert(socket, settings_.tls_ca_file.c_str()), "load TLS CA file");
            }
            amqp_ssl_socket_set_verify_peer(socket, verify ? 1 : 0);
            amqp_ssl_socket_set_verify_hostname(socket, verify ? 1 : 0);
        } else {
            socket = amqp_tcp_socket_new(conn_);
            if (socket == nullptr) {
                throw SessionError("cannot create TCP socket");
            }
        }
        auto timeout = to_timeval(settings_.connect_timeout);
        const auto& endpoint = current_endpoint();
        check_status(amqp_socket_open_noblock(socket, endpoint.host.c_str(), endpoint.port, &timeout),
                     fmt::format("connect to {}", settings_.url.redacted(endpoint)));
        check_status(amqp_set_handshake_timeout(conn_, &timeout), "set handshake timeout");
        check_status(amqp_set_rpc_timeout(conn_, &timeout), "set RPC timeout");

        login();
        amqp_channel_open(conn_, kControlChannel);
        check_reply(conn_, "open control channel");
        name_queues_for_session(session_ + 1);
        declare_topology();
        amqp_channel_open(conn_, kPublishChannel);
        check_reply(conn_, "open publish channel");
        amqp_confirm_select(conn_, kPublishChannel);
        check_reply(conn_, "confirm.select");
        if (!consumers_cancelled_) {
            for (auto& consumer : consumers_) {
                subscribe(consumer);
            }
        }

        limit_unacknowledged_sends(amqp_get_sockfd(conn_));
        socket_.emplace(io_, amqp_get_sockfd(conn_));
        heartbeat_ = std::chrono::seconds(amqp_get_heartbeat(conn_));
        last_received_ = Clock::now();
        last_sent_ = Clock::now();
        next_publish_tag_ = 0;
        ++session_;
        live_session_ = session_;
        consuming_ = !consumers_cancelled_;
        spdlog::info("{}: connected to {} (heartbeat {} s, {} consumers)", log_prefix_,
                     settings_.url.redacted(current_endpoint()), heartbeat_.count(),
                     consumers_cancelled_ ? 0 : consumers_.size());
        if (settings_.observer != nullptr) {
            settings_.observer->on_connection_state(true);
        }
        if (heartbeat_.count() > 0) {
            asio::co_spawn(io_, heartbeat_loop(session_), log_failure(log_prefix_ + " heartbeat"));
        }
        for (auto& waiter : std::exchange(ready_waiters_, {})) {
            complete(std::move(waiter), error_code{});
        }
        flush_waiting();
    }

    /// rabbitmq-c's writes wait without a deadline; on a half-open connection that could hold this thread (and a
    /// shutdown joining it) for the kernel's retransmission timeout, some 15 minutes. The kernel gives up sooner.
    void limit_unacknowledged_sends(int fd) const {
        const unsigned timeout_ms =
            static_cast<unsigned>(std::max<std::int64_t>(60, 2 * settings_.heartbeat.count()) * 1000);
        const int enable = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &timeout_ms, sizeof(timeout_ms));
        ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &enable, sizeof(enable));
    }

    void login() {
        amqp_table_entry_t capability_entries[] = {
            {bytes_of("connection.blocked"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
            {bytes_of("consumer_cancel_notify"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
            {bytes_of("publisher_confirms"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
            {bytes_of("basic.nack"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
            {bytes_of("authentication_failure_close"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
        };
        amqp_field_value_t capabilities{};
        capabilities.kind = AMQP_FIELD_KIND_TABLE;
        capabilities.value.table = amqp_table_t{static_cast<int>(std::size(capability_entries)), capability_entries};
        amqp_field_value_t connection_name{};
        connection_name.kind = AMQP_FIELD_KIND_UTF8;
        connection_name.value.bytes = bytes_of(settings_.name);
        amqp_field_value_t product{};
        product.kind = AMQP_FIELD_KIND_UTF8;
        product.value.bytes = bytes_of("conveyor");
        amqp_table_entry_t entries[] = {
            {bytes_of("capabilities"), capabilities},
            {bytes_of("connection_name"), connection_name},
            {bytes_of("product"), product},
        };
        const amqp_table_t client_properties{static_cast<int>(std::size(entries)), entries};
        const auto reply = amqp_login_with_properties(
            conn_, settings_.url.vhost.c_str(), 0, kFrameMax, static_cast<int>(settings_.heartbeat.count()),
            &client_properties, AMQP_SASL_METHOD_PLAIN, settings_.url.user.c_str(), settings_.url.password.c_str());
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
            throw SessionError(fmt::format("login to {} failed: {}", settings_.url.redacted(current_endpoint()),
                                           describe_reply(reply)));
        }
    }

    void declare_topology() {
        for (const auto& exchange : topology_.exchanges) {
            codec::EncodedTable arguments(exchange.arguments);
            amqp_exchange_declare(conn_, kControlChannel, bytes_of(exchange.name), bytes_of(exchange.type), 0, 1, 0, 0,
                                  arguments.table());
            check_reply(conn_, fmt::format("declare exchange {}", exchange.name));
        }
        std::vector<QueueMismatch> mismatches;
        for (const auto& queue : topology_.queues) {
            codec::EncodedTable arguments(queue.arguments);
            const auto name = declared_name(queue.name);
            amqp_queue_declare(conn_, kControlChannel, bytes_of(name), 0, queue.exclusive ? 0 : 1,
                               queue.exclusive ? 1 : 0, queue.exclusive ? 1 : 0, arguments.table());
            const auto reply = amqp_get_rpc_reply(conn_);
            if (reply.reply_type != AMQP_RESPONSE_NORMAL && closed_for(reply, kPreconditionFailed)) {
                mismatches.push_back({queue.name, describe_reply(reply)});
                reopen_control_channel();
            } else if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
                throw SessionError(fmt::format("declare queue {}: {}", name, describe_reply(reply)));
            }
        }
        note_mismatches(std::move(mismatches));
        for (const auto& binding : topology_.bindings) {
            codec::EncodedTable arguments(binding.arguments);
            amqp_queue_bind(conn_, kControlChannel, bytes_of(declared_name(binding.queue)), bytes_of(binding.exchange),
                            bytes_of(binding.routing_key), arguments.table());
            check_reply(conn_,
                        fmt::format("bind {} to {} by {}", binding.queue, binding.exchange, binding.routing_key));
        }
        for (const auto& binding : topology_.exchange_bindings) {
            amqp_exchange_bind(conn_, kControlChannel, bytes_of(binding.destination), bytes_of(binding.source),
                               bytes_of(binding.routing_key), amqp_empty_table);
            check_reply(conn_, fmt::format("bind exchange {} to {} by {}", binding.destination, binding.source,
                                           binding.routing_key));
        }
        for (const auto& binding : topology_.obsolete_bindings) {
            codec::EncodedTable arguments(binding.arguments);
            amqp_queue_unbind(conn_, kControlChannel, bytes_of(binding.queue), bytes_of(binding.exchange),
                              bytes_of(binding.routing_key), arguments.table());
            check_reply(conn_, fmt::format("unbind obsolete {} from {} by {}", binding.queue, binding.exchange,
                                           binding.routing_key));
        }
    }

    /// Whether the broker closed the channel that asked, with `code` if one is given (404 NOT_FOUND for a queue that
    /// is missing, 406 PRECONDITION_FAILED for one that exists with other arguments).
    static bool closed_for(const amqp_rpc_reply_t& reply, std::optional<std::uint16_t> code = std::nullopt) {
        if (reply.reply_type != AMQP_RESPONSE_SERVER_EXCEPTION || reply.reply.id != AMQP_CHANNEL_CLOSE_METHOD) {
            return false;
        }
        return !code || static_cast<const amqp_channel_close_t*>(reply.reply.decoded)->reply_code == *code;
    }

    /// Logs the queues found with other arguments once per connection (not on each reconnect), in one line.
    void note_mismatches(std::vector<QueueMismatch> mismatches) {
        std::size_t new_ones = 0;
        for (const auto& mismatch : mismatches) {
            new_ones += warned_mismatches_.insert(mismatch.queue).second ? 1 : 0;
        }
        if (new_ones > 0) {
            spdlog::warn(
                "{}: {} queues exist with other arguments than this version declares and are used as they "
                "are (`conveyor topology declare` says what to do); e.g. {}: {}",
                log_prefix_, mismatches.size(), mismatches.front().queue, mismatches.front().broker_says);
        }
        const std::lock_guard lock(last_error_mutex_);
        mismatches_ = std::move(mismatches);
    }

    /// Acknowledges the broker's close of the control channel and opens it again.
    void reopen_control_channel() {
        amqp_channel_close_ok_t close_ok{};
        amqp_send_method(conn_, kControlChannel, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok);
        amqp_channel_open(conn_, kControlChannel);
        check_reply(conn_, "reopen the control channel");
    }

    /// The name a topology queue has on the broker in this session (see QueueSpec::renamed_per_connection).
    const std::string& declared_name(const std::string& name) {
        const auto found = session_names_.find(name);
        if (found != session_names_.end()) {
            return found->second;
        }
        return name;
    }

    void name_queues_for_session(std::uint64_t session) {
        session_names_.clear();
        for (const auto& queue : topology_.queues) {
            if (queue.exclusive && queue.renamed_per_connection) {
                session_names_.emplace(queue.name, fmt::format("{}.{}", queue.name, session));
            }
        }
    }

    /// Opens the consumer's channel with its prefetch, and consumes unless it is paused.
    void subscribe(Consumer& consumer) {
        amqp_channel_open(conn_, consumer.channel);
        check_reply(conn_, fmt::format("open channel for {}", consumer.spec.queue));
        amqp_basic_qos(conn_, consumer.channel, 0, consumer.spec.prefetch, 0);
        check_reply(conn_, fmt::format("basic.qos on {}", consumer.spec.queue));
        if (consumer.paused) {
            return;
        }
        const auto* ok = amqp_basic_consume(conn_, consumer.channel, bytes_of(declared_name(consumer.spec.queue)),
                                            amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
        check_reply(conn_, fmt::format("consume {}", consumer.spec.queue));
        consumer.tag = to_string(ok->consumer_tag);
        consumer.subscribed = true;
    }

    asio::awaitable<void> read_loop() {
        while (true) {
            if (session_error_) {
                throw SessionError(*session_error_);
            }
            if (process_available_frames()) {
                // More frames may be waiting; let queued commands run first.
                co_await asio::post(io_, asio::use_awaitable);
                continue;
            }
            if (session_error_) {
                throw SessionError(*session_error_);
            }
            auto [error] = co_await socket_->async_wait(asio::posix::descriptor_base::wait_read,
                                                        asio::as_tuple(asio::use_awaitable));
            if (session_error_) {
                throw SessionError(*session_error_);
            }
            if (error == asio::error::operation_aborted) {
                continue;  // woken to process frames rabbitmq-c buffered during a synchronous call
            }
            if (error) {
                throw SessionError(fmt::format("socket wait failed: {}", error.message()));
            }
            last_received_ = Clock::now();
        }
    }

    /// Handles frames rabbitmq-c has buffered or can read without blocking; true if it stopped with frames left.
    bool process_available_frames() {
        bool more = true;
        for (int handled = 0; handled < kFramesPerTurn; ++handled) {
            amqp_frame_t frame;
            timeval no_wait{0, 0};
            const int status = amqp_simple_wait_frame_noblock(conn_, &frame, &no_wait);
            if (status == AMQP_STATUS_TIMEOUT) {
                more = false;
                break;
            }
            if (status != AMQP_STATUS_OK) {
                throw SessionError(fmt::format("read failed: {}", amqp_error_string2(status)));
            }
            if (handled == 0) {
                // A busy connection may go long without waiting on its socket; its frames prove the peer alive.
                last_received_ = Clock::now();
            }
            handle_frame(frame);
        }
        hand_over_batches();
        amqp_maybe_release_buffers(conn_);  // frames are copied out by now; frees rabbitmq-c's pools
        return more;
    }

    void handle_frame(const amqp_frame_t& frame) {
        switch (frame.frame_type) {
            case AMQP_FRAME_METHOD:
                handle_method(frame.channel, frame.payload.method);
                break;
            case AMQP_FRAME_HEADER: {
                auto it = incoming_.find(frame.channel);
                if (it == incoming_.end() || it->second.has_header) {
                    throw SessionError(fmt::format("unexpected content header on channel {}", frame.channel));
                }
                auto& content = it->second;
                content.has_header = true;
                content.body_size = frame.payload.properties.body_size;
                content.delivery.message.properties = codec::decode_properties(
                    *static_cast<const amqp_basic_properties_t*>(frame.payload.properties.decoded));
                // Spare room after the body lets JSON parsers (simdjson needs 64 bytes of padding) read it in place.
                content.delivery.message.body.reserve(content.body_size + kBodyPadding);
                if (content.body_size == 0) {
                    finish_content(frame.channel);
                }
                break;
            }
            case AMQP_FRAME_BODY: {
                auto it = incoming_.find(frame.channel);
                if (it == incoming_.end() || !it->second.has_header) {
                    throw SessionError(fmt::format("unexpected content body on channel {}", frame.channel));
                }
                auto& body = it->second.delivery.message.body;
                body.append(static_cast<const char*>(frame.payload.body_fragment.bytes),
                            frame.payload.body_fragment.len);
                if (body.size() >= it->second.body_size) {
                    finish_content(frame.channel);
                }
                break;
            }
            default:
                break;  // heartbeats need no answer; rabbitmq-c already noted the traffic
        }
    }

    void handle_method(amqp_channel_t channel, const amqp_method_t& method) {
        switch (method.id) {
            case AMQP_BASIC_DELIVER_METHOD: {
                const auto* deliver = static_cast<const amqp_basic_deliver_t*>(method.decoded);
                auto* consumer = consumer_on(channel);
                if (consumer == nullptr) {
                    throw SessionError(fmt::format("delivery on channel {} without a consumer", channel));
                }
                IncomingContent content;
                content.delivery.queue = consumer->spec.queue;
                content.delivery.delivery_tag = deliver->delivery_tag;
                content.delivery.redelivered = deliver->redelivered != 0;
                content.delivery.channel = channel;
                content.delivery.session = session_;
                content.delivery.message.exchange = to_string(deliver->exchange);
                content.delivery.message.routing_key = to_string(deliver->routing_key);
                incoming_[channel] = std::move(content);
                break;
            }
            case AMQP_BASIC_RETURN_METHOD: {
                const auto* returned = static_cast<const amqp_basic_return_t*>(method.decoded);
                IncomingContent content;
                content.returned = true;
                content.delivery.message.exchange = to_string(returned->exchange);
                content.delivery.message.routing_key = to_string(returned->routing_key);
                incoming_[channel] = std::move(content);
                break;
            }
            case AMQP_BASIC_ACK_METHOD: {
                const auto* ack = static_cast<const amqp_basic_ack_t*>(method.decoded);
                confirm(ack->delivery_tag, ack->multiple != 0, {});
                break;
            }
            case AMQP_BASIC_NACK_METHOD: {
                const auto* nack = static_cast<const amqp_basic_nack_t*>(method.decoded);
                renew_publish_channel_ = true;
                confirm(nack->delivery_tag, nack->multiple != 0, Errc::nacked);
                break;
            }
            case AMQP_BASIC_CONSUME_OK_METHOD: {
                if (auto* consumer = consumer_on(channel)) {
                    consumer->tag =
                        to_string(static_cast<const amqp_basic_consume_ok_t*>(method.decoded)->consumer_tag);
                    consumer->subscribed = true;
                    consumer->switching = false;
                    switch_consumer(*consumer);
                }
                break;
            }
            case AMQP_BASIC_CANCEL_OK_METHOD: {
                if (auto* consumer = consumer_on(channel)) {
                    consumer->subscribed = false;
                    consumer->switching = false;
                    switch_consumer(*consumer);
                }
                if (std::none_of(consumers_.begin(), consumers_.end(),
                                 [](const Consumer& c) { return c.subscribed || c.switching; })) {
                    // Deliveries read before the cancel-ok in this turn must be handed over before the waiters
                    // learn that no more will come.
                    hand_over_batches();
                    for (auto& waiter : std::exchange(cancel_waiters_, {})) {
                        complete(std::move(waiter), error_code{});
                    }
                }
                break;
            }
            case AMQP_BASIC_CANCEL_METHOD: {
                auto* consumer = consumer_on(channel);
                throw SessionError(fmt::format("broker cancelled the consumer of {}",
                                               consumer != nullptr ? consumer->spec.queue : "an unknown queue"));
            }
            case AMQP_CONNECTION_BLOCKED_METHOD: {
                const auto* blocked = static_cast<const amqp_connection_blocked_t*>(method.decoded);
                blocked_ = true;
                spdlog::warn("{}: broker blocked publishing: {}", log_prefix_, to_string(blocked->reason));
                break;
            }
            case AMQP_CONNECTION_UNBLOCKED_METHOD:
                blocked_ = false;
                spdlog::info("{}: broker unblocked publishing", log_prefix_);
                flush_waiting();
                break;
            case AMQP_CONNECTION_CLOSE_METHOD: {
                const auto* close = static_cast<const amqp_connection_close_t*>(method.decoded);
                amqp_connection_close_ok_t ok{};
                amqp_send_method(conn_, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
                throw SessionError(fmt::format("broker closed the connection: {} {}", close->reply_code,
                                               to_string(close->reply_text)));
            }
            case AMQP_CHANNEL_CLOSE_METHOD: {
                const auto* close = static_cast<const amqp_channel_close_t*>(method.decoded);
                amqp_channel_close_ok_t ok{};
                amqp_send_method(conn_, channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
                throw SessionError(fmt::format("broker closed channel {}: {} {}", channel, close->reply_code,
                                               to_string(close->reply_text)));
            }
            default:
                spdlog::debug("{}: ignoring method 0x{:08x} on channel {}", log_prefix_, method.id, channel);
                break;
        }
    }

    void finish_content(amqp_channel_t channel) {
        auto node = incoming_.extract(channel);
        auto& content = node.mapped();
        if (content.returned) {
            // The publish completes with Errc::unroutable, and its caller says what that means for it (a command
            // on the control exchange with no worker listening is no failure).
            spdlog::debug("{}: broker returned an unroutable message (exchange '{}', routing key '{}', id {})",
                          log_prefix_, content.delivery.message.exchange, content.delivery.message.routing_key,
                          content.delivery.message.properties.message_id);
            returned_.push_back(returned_key(content.delivery.message.exchange, content.delivery.message.routing_key,
                                             content.delivery.message.properties.message_id));
            return;
        }
        auto* consumer = consumer_on(channel);
        const auto tag = content.delivery.delivery_tag;
        if (!consumer->unsettled.delivered(tag)) {
            throw SessionError(fmt::format("delivery tag {} on channel {} is out of sequence", tag, channel));
        }
        consumer->batch.push_back(std::move(content.delivery));
    }

    /// Hands each consumer's deliveries of this read turn over in one batch.
    void hand_over_batches() {
        for (auto& consumer : consumers_) {
            if (consumer.batch.empty()) {
                continue;
            }
            if (consumer.deliveries->try_send(error_code{}, std::move(consumer.batch))) {
                consumer.batch = {};
                continue;
            }
            // The delivery channel is sized for the prefetch of every consumer, so this means misconfiguration.
            spdlog::error("{}: delivery channel full; requeueing {} deliveries of {}", log_prefix_,
                          consumer.batch.size(), consumer.spec.queue);
            for (const auto& delivery : consumer.batch) {
                consumer.unsettled.mark(delivery.delivery_tag, detail::Unsettled::State::settled);
                sent(amqp_basic_reject(conn_, consumer.channel, delivery.delivery_tag, 1), "basic.reject");
            }
            consumer.batch.clear();
        }
    }

    void confirm(std::uint64_t tag, bool multiple, error_code result) {
        const auto end = multiple ? outstanding_.upper_bound(tag) : outstanding_.find(tag);
        auto begin = multiple ? outstanding_.begin() : end;
        auto last = (multiple || end == outstanding_.end()) ? end : std::next(end);
        const auto now = Clock::now();
        for (auto it = begin; it != last; it = outstanding_.erase(it)) {
            auto& publish = it->second;
            error_code outcome = result;
            if (!outcome) {
                const auto returned = std::find(returned_.begin(), returned_.end(),
                                                returned_key(publish.message.exchange, publish.message.routing_key,
                                                             publish.message.properties.message_id));
                if (returned != returned_.end()) {
                    returned_.erase(returned);
                    outcome = Errc::unroutable;
                }
            }
            if (settings_.observer != nullptr) {
                settings_.observer->on_publish_confirmed(publish.message.exchange, now - publish.sent_at);
            }
            if (publish.handler) {
                complete(std::move(*publish.handler), outcome);
            }
        }
        if (renew_publish_channel_ && outstanding_.empty()) {
            renew_publish_channel();
        }
    }

    /// A channel whose first publish to a quorum queue came while that queue had no leader (its leader's node had just
    /// died) keeps nacking every publish to it in RabbitMQ 3.10, even once a new leader serves everyone else; a fresh
    /// channel finds the new leader. So after a nack, once nothing is waiting for a confirm on it, the publish channel
    /// is replaced (publishes meanwhile wait), whatever the reason for the nack: a fresh channel costs little.
    void renew_publish_channel() {
        amqp_channel_close(conn_, kPublishChannel, AMQP_REPLY_SUCCESS);
        check_reply(conn_, "close the publish channel after a nack");
        amqp_channel_open(conn_, kPublishChannel);
        check_reply(conn_, "reopen the publish channel");
        amqp_confirm_select(conn_, kPublishChannel);
        check_reply(conn_, "confirm.select");
        next_publish_tag_ = 0;
        renew_publish_channel_ = false;
        spdlog::debug("{}: publish channel renewed after a nack", log_prefix_);
        flush_waiting();
    }

    asio::awaitable<void> heartbeat_loop(std::uint64_t session) {
        // rabbitmq-c only services heartbeats inside its blocking waits, which this client never makes.
        while (session == session_ && connected() && !stopping_) {
            heartbeat_timer_.expires_after(heartbeat_ / 2);
            auto [error] = co_await heartbeat_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
            if (error || session != session_ || !connected() || stopping_) {
                co_return;
            }
            const auto now = Clock::now();
            if (now - last_received_ > 2 * heartbeat_) {
                fail_session("missed heartbeats from the broker");
                co_return;
            }
            if (now - last_sent_ >= heartbeat_ / 2) {
                amqp_frame_t heartbeat{};
                heartbeat.frame_type = AMQP_FRAME_HEARTBEAT;
                heartbeat.channel = 0;
                if (amqp_send_frame(conn_, &heartbeat) != AMQP_STATUS_OK) {
                    fail_session("sending a heartbeat failed");
                    co_return;
                }
                last_sent_ = now;
            }
        }
    }

    void drain_commands() {
        std::vector<Command> batch;
        {
            std::lock_guard lock(commands_mutex_);
            batch.swap(commands_);
            drain_posted_ = false;
        }
        for (auto& command : batch) {
            std::visit([this](auto& c) { execute(c); }, command);
        }
        send_coalesced_acks();
        // Synchronous calls may have queued incoming frames inside rabbitmq-c, which the socket will not announce.
        if (conn_ != nullptr && connected() && !session_error_ &&
            (amqp_frames_enqueued(conn_) != 0 || amqp_data_in_buffer(conn_) != 0)) {
            if (socket_) {
                socket_->cancel();  // wakes the read loop, which processes them
            }
        }
    }

    void execute(AckCommand& ack) {
        if (ack.session != session_ || !connected()) {
            return;
        }
        auto* consumer = consumer_on(ack.channel);
        if (consumer != nullptr && consumer->unsettled.mark(ack.delivery_tag, detail::Unsettled::State::acked)) {
            consumer->has_new_acks = true;  // sent, coalesced, at the end of the batch
            return;
        }
        sent(amqp_basic_ack(conn_, ack.channel, ack.delivery_tag, 0), "basic.ack");
    }

    void execute(RejectCommand& reject) {
        if (reject.session != session_ || !connected()) {
            return;
        }
        if (auto* consumer = consumer_on(reject.channel)) {
            (void)consumer->unsettled.mark(reject.delivery_tag, detail::Unsettled::State::settled);
            consumer->has_new_acks = true;  // a rejected head may let acked tags behind it go out
        }
        sent(amqp_basic_reject(conn_, reject.channel, reject.delivery_tag, reject.requeue ? 1 : 0), "basic.reject");
    }

    void send_coalesced_acks() {
        std::vector<std::uint64_t> stragglers;
        for (auto& consumer : consumers_) {
            if (!consumer.has_new_acks || !connected() || session_error_) {
                continue;
            }
            consumer.has_new_acks = false;
            stragglers.clear();
            if (const auto highest = consumer.unsettled.take_settled_prefix(stragglers); highest != 0) {
                sent(amqp_basic_ack(conn_, consumer.channel, highest, 1), "basic.ack");
            }
            for (const auto tag : stragglers) {
                sent(amqp_basic_ack(conn_, consumer.channel, tag, 0), "basic.ack");
            }
        }
    }

    void execute(PublishCommand& publish) {
        if (stopping_ || gave_up_) {
            complete(std::move(publish.handler), error_code(stopping_ ? Errc::stopped : Errc::connection_failed));
            return;
        }
        watch_deadline(publish.deadline);
        // Behind earlier waiting publishes, so that they keep their order.
        if (!connected() || blocked_ || renew_publish_channel_ || !waiting_.empty()) {
            waiting_.emplace_back(std::move(publish));
            return;
        }
        publish_now(publish);
    }

    void execute(AbandonPublishCommand& abandon) {
        give_up_publishes([id = abandon.id](const auto& publish) { return publish.id == id; },
                          asio::error::operation_aborted);
    }

    /// Completes the publishes that match with `why`: one still waiting is dropped unsent; one sent keeps its place
    /// in outstanding_, without a handler, so that its confirm (or return) is still matched and then dropped.
    template <typename Match>
    void give_up_publishes(Match match, error_code why) {
        std::erase_if(waiting_, [&](Command& command) {
            auto* publish = std::get_if<PublishCommand>(&command);
            if (publish == nullptr || !match(*publish)) {
                return false;
            }
            complete(std::move(publish->handler), why);
            return true;
        });
        for (auto& [tag, publish] : outstanding_) {
            if (publish.handler && match(publish)) {
                complete(std::move(*publish.handler), why);
                publish.handler.reset();
            }
        }
    }

    /// Wakes expire_publishes() if this deadline comes before the one it waits for.
    void watch_deadline(const std::optional<Clock::time_point>& deadline) {
        if (deadline && *deadline < deadline_timer_.expiry()) {
            deadline_timer_.expires_at(*deadline);
        }
    }

    /// Fails each publish whose deadline has passed with Errc::timed_out.
    asio::awaitable<void> expire_publishes() {
        while (!stopping_) {
            deadline_timer_.expires_at(earliest_deadline());
            co_await deadline_timer_.async_wait(asio::as_tuple(asio::use_awaitable));
            const auto now = Clock::now();
            give_up_publishes([now](const auto& publish) { return publish.deadline && *publish.deadline <= now; },
                              Errc::timed_out);
        }
    }

    [[nodiscard]] Clock::time_point earliest_deadline() const {
        auto earliest = Clock::time_point::max();
        const auto consider = [&earliest](const std::optional<Clock::time_point>& deadline) {
            if (deadline) {
                earliest = std::min(earliest, *deadline);
            }
        };
        for (const auto& command : waiting_) {
            if (const auto* publish = std::get_if<PublishCommand>(&command)) {
                consider(publish->deadline);
            }
        }
        for (const auto& [tag, publish] : outstanding_) {
            if (publish.handler) {
                consider(publish.deadline);
            }
        }
        return earliest;
    }

    void publish_now(PublishCommand& publish) {
        const auto& message = publish.message;
        codec::EncodedProperties properties(message.properties);
        const int status =
            amqp_basic_publish(conn_, kPublishChannel, bytes_of(message.exchange), bytes_of(message.routing_key), 1, 0,
                               properties.get(), bytes_of(message.body));
        if (status != AMQP_STATUS_OK) {
            waiting_.emplace_front(std::move(publish));
            fail_session(fmt::format("basic.publish failed: {}", amqp_error_string2(status)));
            return;
        }
        last_sent_ = Clock::now();
        outstanding_.emplace(++next_publish_tag_,
                             OutstandingPublish{std::move(publish.handler), publish.id, publish.deadline,
                                                std::move(publish.message), last_sent_});
    }

    void execute(CancelConsumersCommand& cancel) {
        consumers_cancelled_ = true;
        consuming_ = false;
        bool any = false;
        if (connected()) {
            for (auto& consumer : consumers_) {
                // One whose consume or cancel is under way is settled when its answer comes (switch_consumer).
                any = any || consumer.subscribed || consumer.switching;
                switch_consumer(consumer);
            }
        }
        if (any) {
            cancel_waiters_.push_back(std::move(cancel.handler));
        } else {
            complete(std::move(cancel.handler), error_code{});
        }
    }

    void execute(PauseConsumerCommand& pause) {
        bool found = false;
        for (auto& consumer : consumers_) {
            if (consumer.spec.queue == pause.queue) {
                found = true;
                consumer.paused = pause.paused;
                switch_consumer(consumer);
            }
        }
        if (!found) {
            spdlog::warn("{}: no consumer of {} to {}", log_prefix_, pause.queue, pause.paused ? "pause" : "resume");
        }
    }

    /// Brings a consumer to what is wanted of it (consuming unless paused or every consumer is cancelled), one
    /// step at a time: a basic.consume or basic.cancel is sent without waiting, and its answer calls this again.
    void switch_consumer(Consumer& consumer) {
        if (!connected() || session_error_ || consumer.switching) {
            return;
        }
        const bool wanted = !consumer.paused && !consumers_cancelled_;
        if (consumer.subscribed && !wanted) {
            amqp_basic_cancel_t request{bytes_of(consumer.tag), 0};
            sent(amqp_send_method(conn_, consumer.channel, AMQP_BASIC_CANCEL_METHOD, &request), "basic.cancel");
            consumer.switching = true;
            spdlog::info("{}: stopped consuming {}", log_prefix_, consumer.spec.queue);
        } else if (!consumer.subscribed && wanted) {
            amqp_basic_consume_t request{};
            const auto& queue = declared_name(consumer.spec.queue);
            request.queue = bytes_of(queue);
            request.consumer_tag = amqp_empty_bytes;
            request.arguments = amqp_empty_table;
            sent(amqp_send_method(conn_, consumer.channel, AMQP_BASIC_CONSUME_METHOD, &request), "basic.consume");
            consumer.switching = true;
            spdlog::info("{}: consuming {} again", log_prefix_, consumer.spec.queue);
        }
    }

    void execute(QueueCountsCommand& query) {
        if (stopping_ || gave_up_) {
            complete(std::move(query.handler), error_code(stopping_ ? Errc::stopped : Errc::connection_failed),
                     QueueCounts{});
            return;
        }
        if (!connected()) {
            waiting_.emplace_back(std::move(query));
            return;
        }
        QueueCounts counts;
        if (query.purge) {
            if (const auto* ok = amqp_queue_purge(conn_, kControlChannel, bytes_of(query.queue)); ok != nullptr) {
                counts.messages = ok->message_count;
            }
        } else if (const auto* ok =
                       amqp_queue_declare(conn_, kControlChannel, bytes_of(query.queue), 1, 0, 0, 0, amqp_empty_table);
                   ok != nullptr) {
            counts = {ok->message_count, ok->consumer_count};
        }
        const auto reply = amqp_get_rpc_reply(conn_);
        if (reply.reply_type == AMQP_RESPONSE_NORMAL) {
            last_received_ = Clock::now();
            complete(std::move(query.handler), error_code{}, counts);
            return;
        }
        if (closed_for(reply)) {
            try {
                reopen_control_channel();
            } catch (const SessionError& e) {
                fail_session(e.what());
            }
            complete(std::move(query.handler), error_code(Errc::not_found), QueueCounts{});
            return;
        }
        fail_session(fmt::format("{} of {} failed: {}", query.purge ? "queue.purge" : "queue.declare (passive)",
                                 query.queue, describe_reply(reply)));
        complete(std::move(query.handler), error_code(Errc::connection_lost), QueueCounts{});
    }

    void execute(WaitReadyCommand& wait) {
        if (connected()) {
            complete(std::move(wait.handler), error_code{});
        } else if (gave_up_ || stopping_) {
            complete(std::move(wait.handler), error_code(stopping_ ? Errc::stopped : Errc::connection_failed));
        } else {
            ready_waiters_.push_back(std::move(wait.handler));
        }
    }

    void sent(int status, std::string_view what) {
        if (status != AMQP_STATUS_OK) {
            fail_session(fmt::format("{} failed: {}", what, amqp_error_string2(status)));
        } else {
            last_sent_ = Clock::now();
        }
    }

    /// Marks the session broken and wakes the read loop, which unwinds it; the first reason wins.
    void fail_session(std::string reason) {
        if (!session_error_) {
            session_error_ = std::move(reason);
        }
        if (socket_) {
            socket_->cancel();
        }
    }

    void close_session() {
        const bool was_connected = connected();
        live_session_ = 0;
        consuming_ = false;
        blocked_ = false;
        renew_publish_channel_ = false;
        if (socket_) {
            socket_->release();  // rabbitmq-c owns the descriptor and closes it below
            socket_.reset();
        }
        if (conn_ != nullptr) {
            amqp_destroy_connection(conn_);
            conn_ = nullptr;
        }
        heartbeat_timer_.cancel();
        incoming_.clear();
        returned_.clear();
        for (auto& consumer : consumers_) {
            consumer.subscribed = false;
            consumer.switching = false;
            consumer.unsettled.clear();
            consumer.has_new_acks = false;
            consumer.batch.clear();
        }
        resend_unconfirmed();
        // The broker forgets consumers with the connection; nothing is left to wait for.
        for (auto& waiter : std::exchange(cancel_waiters_, {})) {
            complete(std::move(waiter), error_code{});
        }
        if (was_connected && settings_.observer != nullptr) {
            settings_.observer->on_connection_state(false);
        }
    }

    /// Publishes the broker had not confirmed when the connection died go out again first on the next one, in their
    /// order: the broker may or may not hold them (at least once; consumers deduplicate by message id). One whose
    /// caller gave up is dropped: its outcome was already reported as unknown.
    void resend_unconfirmed() {
        auto unconfirmed = std::exchange(outstanding_, {});
        // NOLINTNEXTLINE(modernize-loop-convert): clang 14 cannot compile std::views::reverse of libstdc++ 12
        for (auto it = unconfirmed.rbegin(); it != unconfirmed.rend(); ++it) {
            auto& publish = it->second;
            if (!publish.handler) {
                continue;
            }
            if (stopping_) {
                complete(std::move(*publish.handler), error_code(Errc::stopped));
                continue;
            }
            waiting_.emplace_front(
                PublishCommand{std::move(publish.message), publish.id, publish.deadline, std::move(*publish.handler)});
        }
    }

    void flush_waiting() {
        while (!waiting_.empty() && connected() && !blocked_ && !renew_publish_channel_ && !session_error_) {
            auto command = std::move(waiting_.front());
            waiting_.pop_front();
            if (auto* publish = std::get_if<PublishCommand>(&command)) {
                publish_now(*publish);  // execute() would queue it again behind the others
            } else {
                std::visit([this](auto& c) { execute(c); }, command);
            }
        }
    }

    void fail_waiting(Errc reason) {
        for (auto& command : std::exchange(waiting_, {})) {
            fail_command(command, reason);
        }
        for (auto& waiter : std::exchange(ready_waiters_, {})) {
            complete(std::move(waiter), error_code(reason));
        }
    }

    static void fail_command(Command& command, Errc reason) {
        std::visit(
            [reason](auto& c) {
                using T = std::decay_t<decltype(c)>;
                if constexpr (std::is_same_v<T, QueueCountsCommand>) {
                    complete(std::move(c.handler), error_code(reason), QueueCounts{});
                } else if constexpr (requires { c.handler; }) {
                    complete(std::move(c.handler), error_code(reason));
                }
            },
            command);
    }

    static std::string returned_key(std::string_view exchange, std::string_view routing_key, std::string_view id) {
        return fmt::format("{}\n{}\n{}", exchange, routing_key, id);
    }

    Consumer* consumer_on(amqp_channel_t channel) {
        if (channel < kFirstConsumerChannel || channel >= kFirstConsumerChannel + consumers_.size()) {
            return nullptr;
        }
        return &consumers_[channel - kFirstConsumerChannel];
    }

    void set_last_error(std::string error) {
        std::lock_guard lock(last_error_mutex_);
        last_error_ = std::move(error);
    }

    ConnectionSettings settings_;
    Topology topology_;
    std::string log_prefix_;

    asio::io_context io_{1};
    asio::executor_work_guard<asio::io_context::executor_type> work_{io_.get_executor()};
    std::thread thread_;
    asio::steady_timer backoff_timer_{io_};
    asio::steady_timer heartbeat_timer_{io_};
    asio::steady_timer deadline_timer_{io_, Clock::time_point::max()};
    std::mt19937_64 random_{std::random_device{}()};

    std::mutex commands_mutex_;
    std::vector<Command> commands_;
    bool drain_posted_ = false;
    bool stopped_ = false;  // guarded by commands_mutex_

    mutable std::mutex last_error_mutex_;  ///< guards what other threads read: last_error_ and mismatches_
    std::string last_error_;
    std::vector<QueueMismatch> mismatches_;
    std::set<std::string> warned_mismatches_;

    amqp_connection_state_t conn_ = nullptr;
    std::optional<asio::posix::stream_descriptor> socket_;
    std::optional<std::string> session_error_;
    std::uint64_t session_ = 0;
    std::size_t endpoint_ = 0;            ///< which of the URL's brokers the current or next session uses
    bool renew_publish_channel_ = false;  ///< a nack came: replace the publish channel once it has no confirm due
    std::unordered_map<std::string, std::string> session_names_;  ///< see declared_name()
    bool stopping_ = false;
    bool gave_up_ = false;
    bool consumers_cancelled_ = false;
    std::chrono::seconds heartbeat_{0};
    Clock::time_point last_received_;
    Clock::time_point last_sent_;

    std::vector<Consumer> consumers_;
    std::unordered_map<amqp_channel_t, IncomingContent> incoming_;
    std::uint64_t next_publish_tag_ = 0;
    std::map<std::uint64_t, OutstandingPublish> outstanding_;
    /// basic.return carries no delivery tag; RabbitMQ sends it just before the confirm of the same publish, which
    /// is matched by exchange, routing key and message id.
    std::vector<std::string> returned_;
    std::deque<Command> waiting_;
    std::vector<PendingError> cancel_waiters_;
    std::vector<PendingError> ready_waiters_;
};

const FieldValue* find_header(const Headers& headers, std::string_view name) noexcept {
    for (const auto& [key, value] : headers) {
        if (key == name) {
            return &value;
        }
    }
    return nullptr;
}

std::string_view find_text_header(const Headers& headers, std::string_view name) noexcept {
    const auto* value = find_header(headers, name);
    const auto* text = value != nullptr ? std::get_if<std::string>(value) : nullptr;
    return text != nullptr ? std::string_view(*text) : std::string_view();
}

void set_header(Headers& headers, std::string_view name, FieldValue value) {
    for (auto& [key, existing] : headers) {
        if (key == name) {
            existing = std::move(value);
            return;
        }
    }
    headers.emplace_back(std::string(name), std::move(value));
}

Connection::Connection(ConnectionSettings settings, Topology topology)
    : impl_(std::make_unique<Impl>(std::move(settings), std::move(topology))) {}

Connection::~Connection() = default;

void Connection::add_consumer(ConsumerSpec spec, DeliveryChannel& deliveries) {
    impl_->add_consumer(std::move(spec), deliveries);
}

void Connection::start() {
    impl_->start();
}
void Connection::stop() {
    impl_->stop();
}
bool Connection::connected() const noexcept {
    return impl_->connected();
}
bool Connection::consuming() const noexcept {
    return impl_->consuming_;
}
bool Connection::blocked() const noexcept {
    return impl_->blocked_;
}
bool Connection::is_current(const Delivery& delivery) const noexcept {
    return delivery.session == impl_->live_session_;
}
std::vector<QueueMismatch> Connection::queue_mismatches() const {
    return impl_->queue_mismatches();
}

std::string Connection::last_error() const {
    return impl_->last_error();
}

void Connection::ack(const Delivery& delivery) {
    impl_->enqueue(AckCommand{delivery.session, delivery.channel, delivery.delivery_tag});
}

void Connection::reject(const Delivery& delivery, bool requeue) {
    impl_->enqueue(RejectCommand{delivery.session, delivery.channel, delivery.delivery_tag, requeue});
}

void Connection::initiate_publish(Message message, std::optional<Clock::time_point> deadline, ErrorHandler handler) {
    const auto id = ++impl_->next_publish_id_;
    if (auto slot = asio::get_associated_cancellation_slot(handler); slot.is_connected()) {
        slot.assign([impl = impl_.get(), id](asio::cancellation_type type) {
            if (type != asio::cancellation_type::none) {
                impl->enqueue(AbandonPublishCommand{id});
            }
        });
    }
    impl_->enqueue(PublishCommand{std::move(message), id, deadline, PendingError(std::move(handler))});
}

void Connection::initiate_cancel_consumers(ErrorHandler handler) {
    impl_->enqueue(CancelConsumersCommand{PendingError(std::move(handler))});
}

void Connection::pause_consumer(std::string_view queue, bool paused) {
    impl_->enqueue(PauseConsumerCommand{std::string(queue), paused});
}

void Connection::initiate_queue_counts(std::string queue, QueueCountsHandler handler) {
    impl_->enqueue(QueueCountsCommand{std::move(queue), PendingCounts(std::move(handler))});
}

void Connection::initiate_purge_queue(std::string queue, QueueCountsHandler handler) {
    impl_->enqueue(QueueCountsCommand{std::move(queue), PendingCounts(std::move(handler)), true});
}

void Connection::initiate_wait_ready(ErrorHandler handler) {
    impl_->enqueue(WaitReadyCommand{PendingError(std::move(handler))});
}

}  // namespace conveyor::amqp
