#include "conveyor/core/smtp.hpp"

#include <curl/curl.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstring>
#include <mutex>

#include "conveyor/core/redaction.hpp"

namespace conveyor::smtp {
namespace asio = boost::asio;

namespace {

void init_curl_once() {
    static std::once_flag once;
    std::call_once(once, [] {
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            throw std::runtime_error("libcurl could not be initialised");
        }
    });
}

struct Upload {
    std::string_view remaining;
};

std::size_t read_message(char* buffer, std::size_t size, std::size_t count, void* user) {
    auto* upload = static_cast<Upload*>(user);
    const auto chunk = std::min(size * count, upload->remaining.size());
    std::memcpy(buffer, upload->remaining.data(), chunk);
    upload->remaining.remove_prefix(chunk);
    return chunk;
}

struct CurlDeleter {
    void operator()(CURL* curl) const noexcept { curl_easy_cleanup(curl); }
};
struct ListDeleter {
    void operator()(curl_slist* list) const noexcept { curl_slist_free_all(list); }
};

/// Failures that happen before any mail could have reached the server.
bool before_any_mail(CURLcode result) {
    switch (result) {
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
        case CURLE_COULDNT_CONNECT:
        case CURLE_LOGIN_DENIED:
        case CURLE_USE_SSL_FAILED:
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_URL_MALFORMAT:
            return true;
        default:
            return false;
    }
}

/// One blocking delivery, on a thread of the client's pool. Its time budget is what is left of the job's when it
/// starts: it may have waited for a free thread.
void deliver(const Settings& settings, const Mail& mail, std::chrono::steady_clock::time_point deadline) {
    const auto budget =
        std::min(settings.timeout,
                 std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
    if (budget.count() <= 0) {
        throw Error(0, false, "SMTP delivery not attempted: the job's deadline passed while it waited for a thread");
    }
    std::unique_ptr<CURL, CurlDeleter> curl(curl_easy_init());
    if (!curl) {
        throw Error(0, false, "libcurl could not create a handle");
    }
    std::unique_ptr<curl_slist, ListDeleter> recipients(curl_slist_append(nullptr, mail.to.c_str()));
    Upload upload{mail.message};
    std::array<char, CURL_ERROR_SIZE> detail{};
    auto* handle = curl.get();
    curl_easy_setopt(handle, CURLOPT_URL, settings.url.c_str());
    curl_easy_setopt(handle, CURLOPT_MAIL_FROM, mail.from.c_str());
    curl_easy_setopt(handle, CURLOPT_MAIL_RCPT, recipients.get());
    curl_easy_setopt(handle, CURLOPT_READFUNCTION, read_message);
    curl_easy_setopt(handle, CURLOPT_READDATA, &upload);
    curl_easy_setopt(handle, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(handle, CURLOPT_ERRORBUFFER, detail.data());
    curl_easy_setopt(handle, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(handle, CURLOPT_TIMEOUT_MS, static_cast<long>(std::max<std::int64_t>(1, budget.count())));
    curl_easy_setopt(handle, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(std::max<std::int64_t>(1, budget.count())));
    curl_easy_setopt(handle, CURLOPT_USE_SSL, settings.require_tls ? CURLUSESSL_ALL : CURLUSESSL_TRY);
    if (!settings.ca_file.empty()) {
        curl_easy_setopt(handle, CURLOPT_CAINFO, settings.ca_file.c_str());
    }
    if (!settings.username.empty()) {
        curl_easy_setopt(handle, CURLOPT_USERNAME, settings.username.c_str());
        curl_easy_setopt(handle, CURLOPT_PASSWORD, settings.password.c_str());
    }
    const auto result = curl_easy_perform(handle);
    if (result == CURLE_OK) {
        return;
    }
    long reply = 0;
    curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &reply);
    const std::string_view text = detail[0] != '\0' ? std::string_view(detail.data()) : curl_easy_strerror(result);
    // libcurl keeps the reply code of the last completed command; a refused connection has none. A 4xx or 5xx is
    // a refusal (of a recipient, or of the message after DATA); any other failure after connecting may have left
    // the mail with the server without its final reply reaching us.
    const bool refused = reply >= 400;
    throw Error(static_cast<int>(reply), !refused && !before_any_mail(result),
                fmt::format("SMTP delivery failed{}: {}", reply > 0 ? fmt::format(" with reply {}", reply) : "", text));
}

}  // namespace

class Client::Impl {
  public:
    explicit Impl(Settings settings)
        : settings_(std::move(settings)), pool_(std::max<std::size_t>(1, settings_.threads)) {}
    ~Impl() { pool_.join(); }
    Impl(const Impl&) = delete;
    Impl& operator=(const Impl&) = delete;

    Settings settings_;
    asio::thread_pool pool_;
};

Client::Client(Settings settings) {
    if (!settings.url.starts_with("smtp://") && !settings.url.starts_with("smtps://")) {
        throw std::invalid_argument(
            fmt::format("invalid SMTP URL '{}': expected smtp:// or smtps://", redacted_url(settings.url)));
    }
    init_curl_once();
    impl_ = std::make_shared<Impl>(std::move(settings));
}

Client::~Client() = default;

asio::awaitable<void> Client::send(const Mail& mail, std::chrono::steady_clock::time_point deadline) {
    // The awaiting coroutine keeps the pool alive; the transfer holds no reference to it, so the pool is never
    // joined from one of its own threads.
    auto impl = impl_;
    // The blocking transfer runs on the pool; the coroutine resumes on its own executor when it is done. (Named:
    // g++ 12 mishandles non-trivial temporaries inside a co_await expression.)
    auto transfer = [settings = impl->settings_, mail, deadline]() -> asio::awaitable<void> {
        deliver(settings, mail, deadline);
        co_return;
    };
    co_await asio::co_spawn(impl->pool_, std::move(transfer), asio::use_awaitable);
}

std::string masked_address(std::string_view address) {
    const auto at = address.rfind('@');
    if (at == std::string_view::npos || at == 0) {
        return "***";
    }
    return fmt::format("{}***{}", address.front(), address.substr(at));
}

}  // namespace conveyor::smtp
