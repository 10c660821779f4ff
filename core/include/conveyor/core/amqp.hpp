#pragma once

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/experimental/concurrent_channel.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

/// AMQP 0-9-1 client on rabbitmq-c, driven by Asio. Each Connection owns one TCP (or TLS) connection and runs
/// it on a thread of its own: rabbitmq-c writes synchronously and may block in a full socket buffer, so no
/// thread that runs job coroutines ever calls into it. Job coroutines talk to the connection through
/// thread-safe calls (ack, reject) and asynchronous operations (publish, cancel consumers, queue counts).
namespace conveyor::amqp {

/// A header value. AMQP field tables know more kinds (arrays, nested tables, decimals); those are not
/// used by Conveyor's wire contract and are dropped when a table is decoded.
using FieldValue = std::variant<std::string, std::int64_t, bool, double>;

/// An AMQP field table. Ordered, because tables are encoded as lists and they are small.
using Headers = std::vector<std::pair<std::string, FieldValue>>;

[[nodiscard]] const FieldValue* find_header(const Headers& headers, std::string_view name) noexcept;
/// A header's value when it is a string; empty when it is absent or of another type.
[[nodiscard]] std::string_view find_text_header(const Headers& headers, std::string_view name) noexcept;
/// Sets `name` to `value`, replacing an existing entry of that name.
void set_header(Headers& headers, std::string_view name, FieldValue value);

/// One entry of the x-death header RabbitMQ adds when it dead-letters a message (most recent first).
struct Death {
    std::string queue;
    std::string reason;  ///< rejected, expired, maxlen or delivery_limit
    std::vector<std::string> routing_keys;
};

/// The subset of basic.properties that Conveyor reads and writes.
struct Properties {
    std::string content_type;
    std::string content_encoding;
    std::string message_id;
    std::string correlation_id;
    std::string type;
    std::string reply_to;
    std::string expiration;
    std::string app_id;
    std::optional<std::uint64_t> timestamp;  ///< Seconds since the epoch (AMQP has no finer unit).
    std::uint8_t delivery_mode = 2;          ///< 2 = persistent.
    Headers headers;
    /// The broker's x-death header, decoded on delivery and never sent: a message the broker dead-lettered
    /// carries its original routing key only there.
    std::vector<Death> deaths;
};

struct Message {
    std::string exchange;
    std::string routing_key;
    Properties properties;
    std::string body;
};

/// A message delivered to a consumer. Ack or reject it exactly once, through the Connection it came from.
struct Delivery {
    Message message;
    std::string queue;
    std::uint64_t delivery_tag = 0;
    bool redelivered = false;
    std::uint16_t channel = 0;
    std::uint64_t session = 0;  ///< Which (re)connection delivered it; tags are only valid on that one.
    /// Set on a message that did not come from the broker but from the application's own store of parked messages,
    /// as that store's id for it: its owner settles it there, never the consumer (for which it is not current).
    std::optional<std::int64_t> stored_id;
};

/// One broker of a URL: a cluster's nodes are several.
struct Endpoint {
    std::string host;
    std::uint16_t port = 5672;

    friend bool operator==(const Endpoint&, const Endpoint&) = default;
};

struct Url {
    bool tls = false;
    /// At least one. A connection starts at the first, as libpq does with its hosts, and moves on to the next (round
    /// the list) whenever a connection fails: the order is the operator's way to prefer a node, and clients of one
    /// cluster spread over its nodes by listing them in different orders (or behind one load-balanced name).
    std::vector<Endpoint> endpoints;
    std::string user = "guest";
    std::string password = "guest";
    std::string vhost = "/";

    /// Parses amqp://user:pass@host:port/vhost and amqps://…, and a cluster's nodes as several comma-separated
    /// hosts sharing the credentials and vhost (amqp://user:pass@node1:5672,node2:5672,node3/vhost, libpq's
    /// multi-host form); throws std::invalid_argument saying what is wrong.
    [[nodiscard]] static Url parse(std::string_view text);
    /// The URL with the password masked, for logs and errors.
    [[nodiscard]] std::string redacted() const;
    /// One endpoint of it, masked, to say which node a connection reached.
    [[nodiscard]] std::string redacted(const Endpoint& endpoint) const;
};

struct ExchangeSpec {
    std::string name;
    std::string type = "topic";
    Headers arguments{};  ///< e.g. alternate-exchange
};

struct QueueSpec {
    std::string name;
    Headers arguments;  ///< e.g. x-queue-type = quorum
    /// A classic queue of this connection alone, deleted when it closes (and declared anew on a reconnect);
    /// otherwise durable.
    bool exclusive = false;
    /// For an exclusive queue reached only through its bindings: each connection declares it as "<name>.<connection
    /// number>". The last connection's queue may outlive it on a frozen or cut-off node until the cluster notices
    /// (some net_ticktime later), and would refuse the new connection its name (405 RESOURCE_LOCKED).
    bool renamed_per_connection = false;
};

struct BindingSpec {
    std::string queue;
    std::string exchange;
    std::string routing_key;
    Headers arguments{};  ///< what a headers exchange matches
};

/// An exchange-to-exchange binding: messages `source` routes by `routing_key` also go through `destination`.
struct ExchangeBindingSpec {
    std::string destination;
    std::string source;
    std::string routing_key;
};

/// Durable exchanges, queues and bindings, declared on every (re)connect before consuming starts.
struct Topology {
    std::vector<ExchangeSpec> exchanges;
    std::vector<QueueSpec> queues;
    std::vector<BindingSpec> bindings;
    std::vector<ExchangeBindingSpec> exchange_bindings;
    /// Bindings an earlier version declared and this one replaced: removed after the new ones are in place (a
    /// message may take both routes for that moment: at least once, never unroutable). Removing one that is not
    /// there is a no-op.
    std::vector<BindingSpec> obsolete_bindings;
};

/// A durable queue of the topology that exists on the broker with other arguments than the topology's. A queue's
/// arguments cannot change once it exists, so it is used as it is: one made by an earlier version or by hand must not
/// refuse every connection.
struct QueueMismatch {
    std::string queue;
    std::string broker_says;  ///< the broker's 406 text: RabbitMQ names the first argument that differs
};

struct ConsumerSpec {
    std::string queue;
    std::uint16_t prefetch = 100;  ///< basic.qos per consumer; quorum queues do not support global qos.
};

/// Told about connection events, on the connection's thread. Keep implementations cheap and thread-safe.
class ConnectionObserver {
  public:
    virtual ~ConnectionObserver() = default;
    virtual void on_connection_state(bool /*connected*/) {}
    virtual void on_publish_confirmed(std::string_view /*exchange*/, std::chrono::duration<double> /*latency*/) {}
};

struct ConnectionSettings {
    /// Broker to connect to: with several endpoints, a failed connection moves on to the next.
    Url url;
    /// Shown in the management UI (client property connection_name).
    std::string name = "conveyor";
    /// Heartbeat interval proposed to the broker; 0 disables heartbeats.
    std::chrono::seconds heartbeat{30};
    /// Deadline for TCP/TLS connect and for each synchronous AMQP method during set-up.
    std::chrono::milliseconds connect_timeout{10'000};
    /// Reconnect backoff: exponential from min to max, with full jitter.
    std::chrono::milliseconds reconnect_min{200};
    std::chrono::milliseconds reconnect_max{10'000};
    /// Give up after this many failed connection attempts in a row; 0 retries forever.
    unsigned max_connect_attempts = 0;
    /// PEM file with the CA that signs the broker's certificate (amqps only); empty uses no peer verification.
    std::string tls_ca_file;
    /// Receives connection events; may be null. Must outlive the connection.
    ConnectionObserver* observer = nullptr;
};

enum class Errc {
    nacked = 1,         ///< the broker refused the message (basic.nack)
    unroutable,         ///< no queue is bound for the routing key (basic.return)
    connection_lost,    ///< the connection dropped before the broker answered (queue counts, purge)
    connection_failed,  ///< max_connect_attempts exhausted
    stopped,            ///< the connection was stopped
    not_found,          ///< queue or exchange does not exist
    timed_out,          ///< the publish's deadline passed before the broker confirmed it
};
[[nodiscard]] const boost::system::error_category& error_category() noexcept;
[[nodiscard]] boost::system::error_code make_error_code(Errc e) noexcept;

struct QueueCounts {
    std::uint32_t messages = 0;  ///< ready messages (not counting unacknowledged ones)
    std::uint32_t consumers = 0;
};

/// Deliveries arrive in batches: everything one read of the socket brought for a consumer. Handing a batch to
/// another thread costs one wake-up instead of one per message.
using DeliveryBatch = std::vector<Delivery>;
using DeliveryChannel = boost::asio::experimental::concurrent_channel<void(boost::system::error_code, DeliveryBatch)>;
using ErrorHandler = boost::asio::any_completion_handler<void(boost::system::error_code)>;
using QueueCountsHandler = boost::asio::any_completion_handler<void(boost::system::error_code, QueueCounts)>;

class Connection {
  public:
    Connection(ConnectionSettings settings, Topology topology);
    ~Connection();
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    /// Registers a consumer; call before start(). Batches of deliveries are try_sent into `deliveries`, whose
    /// capacity must cover the sum of the prefetch of every consumer feeding it (a batch holds at least one).
    void add_consumer(ConsumerSpec spec, DeliveryChannel& deliveries);

    /// Starts the connection thread, which connects (and reconnects) in the background.
    void start();
    /// Closes the connection (the broker requeues unacknowledged deliveries), fails pending operations with
    /// Errc::stopped and joins the thread. Idempotent.
    void stop();

    [[nodiscard]] bool connected() const noexcept;
    /// Connected, and every registered consumer is subscribed.
    [[nodiscard]] bool consuming() const noexcept;
    /// The broker sent connection.blocked (a resource alarm); publishes wait until it unblocks.
    [[nodiscard]] bool blocked() const noexcept;
    /// The last connection error, for diagnostics.
    [[nodiscard]] std::string last_error() const;
    /// The topology's queues found with other arguments on the last declaration (each also logged once, as a warning).
    [[nodiscard]] std::vector<QueueMismatch> queue_mismatches() const;

    /// False once the session that delivered it has ended: the broker has requeued it and will deliver it again,
    /// so running it now would only duplicate work.
    [[nodiscard]] bool is_current(const Delivery& delivery) const noexcept;

    /// Thread-safe and non-blocking. A delivery from an earlier session is dropped: the broker has already
    /// requeued it when that session ended.
    void ack(const Delivery& delivery);
    void reject(const Delivery& delivery, bool requeue);

    /// Thread-safe and non-blocking; may be called before start(). Stops (basic.cancel) or resumes (basic.consume)
    /// the consumer of `queue`, across reconnects; deliveries the broker sent before the cancel still arrive.
    void pause_consumer(std::string_view queue, bool paused);

    /// Publishes with mandatory=true on a confirm channel and completes when the broker confirms:
    /// success, Errc::nacked, Errc::unroutable or Errc::stopped. Waits while the connection is down or blocked; a
    /// publish the connection lost before its confirm is sent again on the next connection (to whichever node of a
    /// cluster it reaches), so the broker may hold it twice: at least once. Emitting the handler's cancellation slot
    /// completes it at once with operation_aborted; a publish already sent may still reach its queue then (its
    /// outcome is unknown). The connection must outlive the operation and any emission of that slot.
    template <typename Token>
    auto async_publish(Message message, Token&& token) {
        return async_publish(std::move(message), std::nullopt, std::forward<Token>(token));
    }

    /// As above, and completes with Errc::timed_out once `timeout` has passed without a confirm (waiting while
    /// the connection is down or blocked counts): whoever holds locks while publishing holds them that long at
    /// most, even under a broker's resource alarm.
    template <typename Token>
    auto async_publish(Message message, std::optional<std::chrono::milliseconds> timeout, Token&& token) {
        std::optional<std::chrono::steady_clock::time_point> deadline;
        if (timeout) {
            deadline = std::chrono::steady_clock::now() + *timeout;
        }
        return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
            [this, deadline](ErrorHandler handler, Message m) {
                initiate_publish(std::move(m), deadline, std::move(handler));
            },
            token, std::move(message));
    }

    /// Cancels every consumer (basic.cancel) and completes once the broker has confirmed; deliveries sent
    /// before the confirmation are in the delivery channels by then. Consumers are not re-subscribed after.
    template <typename Token>
    auto async_cancel_consumers(Token&& token) {
        return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
            [this](ErrorHandler handler) { initiate_cancel_consumers(std::move(handler)); }, token);
    }

    /// Message and consumer counts of a queue (passive queue.declare); Errc::not_found if it does not exist.
    template <typename Token>
    auto async_queue_counts(std::string queue, Token&& token) {
        return boost::asio::async_initiate<Token, void(boost::system::error_code, QueueCounts)>(
            [this](QueueCountsHandler handler, std::string q) {
                initiate_queue_counts(std::move(q), std::move(handler));
            },
            token, std::move(queue));
    }

    /// Deletes the ready messages of a queue (queue.purge); the counts report how many were deleted.
    template <typename Token>
    auto async_purge_queue(std::string queue, Token&& token) {
        return boost::asio::async_initiate<Token, void(boost::system::error_code, QueueCounts)>(
            [this](QueueCountsHandler handler, std::string q) {
                initiate_purge_queue(std::move(q), std::move(handler));
            },
            token, std::move(queue));
    }

    /// Completes when the topology has been declared on a live connection (or connecting gave up).
    template <typename Token>
    auto async_wait_ready(Token&& token) {
        return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
            [this](ErrorHandler handler) { initiate_wait_ready(std::move(handler)); }, token);
    }

  private:
    void initiate_publish(Message message, std::optional<std::chrono::steady_clock::time_point> deadline,
                          ErrorHandler handler);
    void initiate_cancel_consumers(ErrorHandler handler);
    void initiate_queue_counts(std::string queue, QueueCountsHandler handler);
    void initiate_purge_queue(std::string queue, QueueCountsHandler handler);
    void initiate_wait_ready(ErrorHandler handler);

    class Impl;
    std::unique_ptr<Impl> impl_;
};

/// Publishes every message at once (one round of confirms, not one per message); each message's result, in order.
/// With a timeout, each publish not confirmed by then ends with Errc::timed_out.
boost::asio::awaitable<std::vector<boost::system::error_code>> publish_all(
    Connection& connection, std::vector<Message> messages,
    std::optional<std::chrono::milliseconds> timeout = std::nullopt);

/// Connection::stop() for a coroutine. It joins the connection's thread, so spawn it on a blocking pool, never on an
/// I/O thread: `co_await co_spawn(pool, amqp::stop_connection(connection), use_awaitable)`.
boost::asio::awaitable<void> stop_connection(Connection& connection);

}  // namespace conveyor::amqp

template <>
struct boost::system::is_error_code_enum<conveyor::amqp::Errc> : std::true_type {};
