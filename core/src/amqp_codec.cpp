#include "amqp_codec.hpp"

#include <algorithm>

namespace conveyor::amqp::codec {
namespace {

struct FieldEncoder {
    amqp_field_value_t operator()(const std::string& text) const {
        amqp_field_value_t value{};
        value.kind = AMQP_FIELD_KIND_UTF8;
        value.value.bytes = bytes_of(text);
        return value;
    }
    amqp_field_value_t operator()(std::int64_t number) const {
        amqp_field_value_t value{};
        value.kind = AMQP_FIELD_KIND_I64;
        value.value.i64 = number;
        return value;
    }
    amqp_field_value_t operator()(bool flag) const {
        amqp_field_value_t value{};
        value.kind = AMQP_FIELD_KIND_BOOLEAN;
        value.value.boolean = flag ? 1 : 0;
        return value;
    }
    amqp_field_value_t operator()(double number) const {
        amqp_field_value_t value{};
        value.kind = AMQP_FIELD_KIND_F64;
        value.value.f64 = number;
        return value;
    }
};

std::optional<FieldValue> decode_field(const amqp_field_value_t& field) {
    switch (field.kind) {
        case AMQP_FIELD_KIND_UTF8:
        case AMQP_FIELD_KIND_BYTES:
            return to_string(field.value.bytes);
        case AMQP_FIELD_KIND_BOOLEAN:
            return field.value.boolean != 0;
        case AMQP_FIELD_KIND_I8:
            return std::int64_t{field.value.i8};
        case AMQP_FIELD_KIND_U8:
            return std::int64_t{field.value.u8};
        case AMQP_FIELD_KIND_I16:
            return std::int64_t{field.value.i16};
        case AMQP_FIELD_KIND_U16:
            return std::int64_t{field.value.u16};
        case AMQP_FIELD_KIND_I32:
            return std::int64_t{field.value.i32};
        case AMQP_FIELD_KIND_U32:
            return std::int64_t{field.value.u32};
        case AMQP_FIELD_KIND_I64:
            return field.value.i64;
        case AMQP_FIELD_KIND_U64:
        case AMQP_FIELD_KIND_TIMESTAMP:
            return static_cast<std::int64_t>(field.value.u64);
        case AMQP_FIELD_KIND_F32:
            return double{field.value.f32};
        case AMQP_FIELD_KIND_F64:
            return field.value.f64;
        default:
            return std::nullopt;
    }
}

void set_bytes(amqp_basic_properties_t& properties, amqp_flags_t flag, amqp_bytes_t& field, const std::string& text) {
    if (!text.empty()) {
        field = bytes_of(text);
        properties._flags |= flag;
    }
}

void get_bytes(const amqp_basic_properties_t& properties, amqp_flags_t flag, const amqp_bytes_t& field,
               std::string& text) {
    if ((properties._flags & flag) != 0) {
        text = to_string(field);
    }
}

}  // namespace

EncodedTable::EncodedTable(const Headers& headers) {
    entries_.reserve(headers.size());
    for (const auto& [name, value] : headers) {
        entries_.push_back(amqp_table_entry_t{bytes_of(name), std::visit(FieldEncoder{}, value)});
    }
}

EncodedProperties::EncodedProperties(const Properties& p) : headers_(p.headers) {
    auto& out = properties_;
    set_bytes(out, AMQP_BASIC_CONTENT_TYPE_FLAG, out.content_type, p.content_type);
    set_bytes(out, AMQP_BASIC_CONTENT_ENCODING_FLAG, out.content_encoding, p.content_encoding);
    set_bytes(out, AMQP_BASIC_MESSAGE_ID_FLAG, out.message_id, p.message_id);
    set_bytes(out, AMQP_BASIC_CORRELATION_ID_FLAG, out.correlation_id, p.correlation_id);
    set_bytes(out, AMQP_BASIC_TYPE_FLAG, out.type, p.type);
    set_bytes(out, AMQP_BASIC_REPLY_TO_FLAG, out.reply_to, p.reply_to);
    set_bytes(out, AMQP_BASIC_EXPIRATION_FLAG, out.expiration, p.expiration);
    set_bytes(out, AMQP_BASIC_APP_ID_FLAG, out.app_id, p.app_id);
    if (p.timestamp) {
        out.timestamp = *p.timestamp;
        out._flags |= AMQP_BASIC_TIMESTAMP_FLAG;
    }
    out.delivery_mode = p.delivery_mode;
    out._flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
    if (!p.headers.empty()) {
        out.headers = headers_.table();
        out._flags |= AMQP_BASIC_HEADERS_FLAG;
    }
}

Headers decode_table(const amqp_table_t& table) {
    Headers headers;
    headers.reserve(static_cast<std::size_t>(std::max(table.num_entries, 0)));
    for (int i = 0; i < table.num_entries; ++i) {
        const auto& entry = table.entries[i];
        if (auto value = decode_field(entry.value)) {
            headers.emplace_back(to_string(entry.key), std::move(*value));
        }
    }
    return headers;
}

namespace {

const amqp_field_value_t* table_field(const amqp_table_t& table, std::string_view name) {
    for (int i = 0; i < table.num_entries; ++i) {
        if (to_string(table.entries[i].key) == name) {
            return &table.entries[i].value;
        }
    }
    return nullptr;
}

std::string text_field(const amqp_table_t& table, std::string_view name) {
    const auto* field = table_field(table, name);
    if (field == nullptr || (field->kind != AMQP_FIELD_KIND_UTF8 && field->kind != AMQP_FIELD_KIND_BYTES)) {
        return {};
    }
    return to_string(field->value.bytes);
}

/// x-death: an array of tables {queue, reason, routing-keys: [...], count, exchange, time}.
std::vector<Death> decode_deaths(const amqp_table_t& headers) {
    std::vector<Death> deaths;
    const auto* field = table_field(headers, "x-death");
    if (field == nullptr || field->kind != AMQP_FIELD_KIND_ARRAY) {
        return deaths;
    }
    const auto& entries = field->value.array;
    for (int i = 0; i < entries.num_entries; ++i) {
        if (entries.entries[i].kind != AMQP_FIELD_KIND_TABLE) {
            continue;
        }
        const auto& table = entries.entries[i].value.table;
        Death death{text_field(table, "queue"), text_field(table, "reason"), {}};
        if (const auto* keys = table_field(table, "routing-keys");
            keys != nullptr && keys->kind == AMQP_FIELD_KIND_ARRAY) {
            for (int k = 0; k < keys->value.array.num_entries; ++k) {
                const auto& key = keys->value.array.entries[k];
                if (key.kind == AMQP_FIELD_KIND_UTF8 || key.kind == AMQP_FIELD_KIND_BYTES) {
                    death.routing_keys.push_back(to_string(key.value.bytes));
                }
            }
        }
        deaths.push_back(std::move(death));
    }
    return deaths;
}

}  // namespace

Properties decode_properties(const amqp_basic_properties_t& in) {
    Properties out;
    get_bytes(in, AMQP_BASIC_CONTENT_TYPE_FLAG, in.content_type, out.content_type);
    get_bytes(in, AMQP_BASIC_CONTENT_ENCODING_FLAG, in.content_encoding, out.content_encoding);
    get_bytes(in, AMQP_BASIC_MESSAGE_ID_FLAG, in.message_id, out.message_id);
    get_bytes(in, AMQP_BASIC_CORRELATION_ID_FLAG, in.correlation_id, out.correlation_id);
    get_bytes(in, AMQP_BASIC_TYPE_FLAG, in.type, out.type);
    get_bytes(in, AMQP_BASIC_REPLY_TO_FLAG, in.reply_to, out.reply_to);
    get_bytes(in, AMQP_BASIC_EXPIRATION_FLAG, in.expiration, out.expiration);
    get_bytes(in, AMQP_BASIC_APP_ID_FLAG, in.app_id, out.app_id);
    if ((in._flags & AMQP_BASIC_TIMESTAMP_FLAG) != 0) {
        out.timestamp = in.timestamp;
    }
    out.delivery_mode = (in._flags & AMQP_BASIC_DELIVERY_MODE_FLAG) != 0 ? in.delivery_mode : 1;
    if ((in._flags & AMQP_BASIC_HEADERS_FLAG) != 0) {
        out.headers = decode_table(in.headers);
        out.deaths = decode_deaths(in.headers);
    }
    return out;
}

}  // namespace conveyor::amqp::codec
