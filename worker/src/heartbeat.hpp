#pragma once

#include <boost/asio/awaitable.hpp>
#include <functional>
#include <string>

#include "conveyor/admin/workers.hpp"
#include "conveyor/core/pg.hpp"
#include "housekeeping.hpp"

namespace conveyor::worker {

/// This worker's row in conveyor.workers: registered when the database is first usable, refreshed every heartbeat
/// interval with the load `load` reports, marked stopped at a clean shutdown. A heartbeat that fails is skipped
/// (the database probe reports the outage); three missed in a row show the worker as gone.
class Heartbeat {
  public:
    Heartbeat(pg::Pool& pool, workers::Identity identity, std::function<workers::Load()> load)
        : pool_(pool), identity_(std::move(identity)), load_(std::move(load)) {}

    /// Beats until cancelled.
    boost::asio::awaitable<void> run(const DatabaseHealth& database);

    /// Marks the instance stopped, if it was ever registered; a failure is logged, not thrown.
    boost::asio::awaitable<void> stop();

  private:
    boost::asio::awaitable<void> beat_once();

    pg::Pool& pool_;
    workers::Identity identity_;
    std::function<workers::Load()> load_;
    std::string instance_id_;
};

}  // namespace conveyor::worker
