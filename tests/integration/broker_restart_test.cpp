#include "worker_fixture.hpp"

namespace conveyor::testing {
namespace {

using namespace std::chrono_literals;

TEST_F(WorkerTest, ReconnectsByItselfAfterTheBrokerRestarts) {
    auto worker = start_worker({}, "broker-restart");
    run_cli({"enqueue", "diag.noop", "--count", "100"});
    ASSERT_TRUE(eventually([&] { return worker.succeeded() == 100; }, 30s));

    const auto [status, output] =
        run_command({(source_dir() / "deploy/local/services").string(), "restart", "rabbitmq"}, 120s);
    ASSERT_EQ(status, 0) << output;

    ASSERT_TRUE(eventually([&] { return worker.ready(); }, 60s)) << worker.process->log();
    EXPECT_EQ(worker.metric("conveyor_broker_connected"), 1);
    Broker after_restart;
    after_restart.connect();
    for (int i = 0; i < 100; ++i) {
        after_restart.publish(Broker::job("diag.noop", "{}"));
    }
    ASSERT_TRUE(eventually([&] { return worker.succeeded() == 200; }, 30s)) << worker.process->log();
    EXPECT_TRUE(worker.process->running());
    EXPECT_NE(worker.process->log().find("connection lost"), std::string::npos);
}

}  // namespace
}  // namespace conveyor::testing
