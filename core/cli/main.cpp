#include "conveyor/cli/cli.hpp"

int main(int argc, char** argv) {
    return conveyor::cli::run({argv, static_cast<std::size_t>(argc)});
}
