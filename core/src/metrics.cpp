#include "conveyor/core/metrics.hpp"

#include <prometheus/text_serializer.h>

namespace conveyor {

std::string serialize_metrics(const prometheus::Registry& registry) {
    return prometheus::TextSerializer().Serialize(registry.Collect());
}

}  // namespace conveyor
