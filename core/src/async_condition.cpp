#include "conveyor/core/async_condition.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/experimental/channel_error.hpp>
#include <vector>

namespace conveyor {
namespace asio = boost::asio;

AsyncCondition::Waiter::Waiter(AsyncCondition& condition, const asio::any_io_executor& executor)
    : condition_(condition), channel_(std::make_shared<Channel>(executor, 1)) {
    std::lock_guard lock(condition_.mutex_);
    entry_ = condition_.waiters_.insert(condition_.waiters_.end(), channel_);
    ++condition_.waiting_;
}

AsyncCondition::Waiter::~Waiter() {
    std::lock_guard lock(condition_.mutex_);
    condition_.waiters_.erase(entry_);
    --condition_.waiting_;
}

asio::awaitable<void> AsyncCondition::Waiter::wake_up() {
    auto [error] = co_await channel_->async_receive(asio::as_tuple(asio::use_awaitable));
    // A channel reports its cancelled receive as channel_cancelled; callers expect what every Asio wait reports.
    if (error == asio::experimental::error::channel_cancelled) {
        throw boost::system::system_error(asio::error::operation_aborted);
    }
    if (error) {
        throw boost::system::system_error(error);
    }
}

void AsyncCondition::notify_all() noexcept {
    if (waiting_ == 0) {
        return;
    }
    std::vector<std::shared_ptr<Channel>> waiters;
    {
        std::lock_guard lock(mutex_);
        waiters.assign(waiters_.begin(), waiters_.end());
    }
    // Outside the lock: a send may complete a receive. The copies keep a channel alive while its waiter leaves, and a
    // full channel has a wake-up pending already.
    for (const auto& channel : waiters) {
        channel->try_send(boost::system::error_code{});
    }
}

}  // namespace conveyor
