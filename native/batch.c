/*
 * batch.c - encode and walk Kafka RecordBatch v2 (layout in batch.h).
 */
#include <string.h>

#include "batch.h"
#include "ring.h"

/* ---- varint primitives ------------------------------------------------ */

/* Reads a zigzag varlong; returns bytes used, 0 when malformed or truncated. */
static inline size_t get_varlong(const uint8_t *p, const uint8_t *end, int64_t *out) {
    uint64_t z = 0;
    for (size_t n = 0; n < 10 && p + n < end; n++) {
        z |= (uint64_t)(p[n] & 0x7F) << (7 * n);
        if (!(p[n] & 0x80)) {
            *out = (int64_t)(z >> 1) ^ -(int64_t)(z & 1);
            return n + 1;
        }
    }
    return 0;
}

/* ---- encoding ---------------------------------------------------------- */

void engine_batch_write_header(uint8_t *batch, size_t total_length, int64_t base_offset,
                               int32_t records_count, int64_t base_timestamp,
                               int64_t max_timestamp, const engine_producer_fields_t *fields) {
    put_be64(batch + ENGINE_BATCH_BASE_OFFSET_OFFSET, (uint64_t)base_offset);
    put_be32(batch + ENGINE_BATCH_LENGTH_OFFSET,
             (uint32_t)(total_length - ENGINE_BATCH_LENGTH_OVERHEAD));
    put_be32(batch + ENGINE_BATCH_LEADER_EPOCH_OFFSET, (uint32_t)fields->leader_epoch);
    batch[ENGINE_BATCH_MAGIC_OFFSET] = ENGINE_BATCH_MAGIC;
    put_be16(batch + ENGINE_BATCH_ATTRIBUTES_OFFSET, (uint16_t)fields->attributes);
    put_be32(batch + ENGINE_BATCH_LAST_OFFSET_DELTA_OFFSET, (uint32_t)(records_count - 1));
    put_be64(batch + ENGINE_BATCH_BASE_TIMESTAMP_OFFSET, (uint64_t)base_timestamp);
    put_be64(batch + ENGINE_BATCH_MAX_TIMESTAMP_OFFSET, (uint64_t)max_timestamp);
    put_be64(batch + ENGINE_BATCH_PRODUCER_ID_OFFSET, (uint64_t)fields->producer_id);
    put_be16(batch + ENGINE_BATCH_PRODUCER_EPOCH_OFFSET, (uint16_t)fields->producer_epoch);
    put_be32(batch + ENGINE_BATCH_BASE_SEQUENCE_OFFSET, (uint32_t)fields->base_sequence);
    put_be32(batch + ENGINE_BATCH_RECORDS_COUNT_OFFSET, (uint32_t)records_count);
    uint32_t crc = engine_crc32c(0, batch + ENGINE_BATCH_ATTRIBUTES_OFFSET,
                                 total_length - ENGINE_BATCH_ATTRIBUTES_OFFSET);
    put_be32(batch + ENGINE_BATCH_CRC_OFFSET, crc);
}

/* ---- walking ----------------------------------------------------------- */

/* Does the CRC32C of the batch at p (total bytes) match its crc field? */
static inline int crc_matches(const uint8_t *p, uint64_t total) {
    return get_be32(p + ENGINE_BATCH_CRC_OFFSET) ==
           engine_crc32c(0, p + ENGINE_BATCH_ATTRIBUTES_OFFSET,
                         total - ENGINE_BATCH_ATTRIBUTES_OFFSET);
}

/* Checks the header of the batch at p (avail bytes from p); sets *total. */
static int check_batch(const uint8_t *p, uint64_t avail, int verify_crc, uint64_t *total) {
    if (avail < ENGINE_BATCH_HEADER_LENGTH) return ENGINE_BATCH_TRUNCATED;
    int32_t batch_length = (int32_t)get_be32(p + ENGINE_BATCH_LENGTH_OFFSET);
    if (batch_length < ENGINE_BATCH_HEADER_LENGTH - ENGINE_BATCH_LENGTH_OVERHEAD)
        return ENGINE_BATCH_CORRUPT;
    if (p[ENGINE_BATCH_MAGIC_OFFSET] != ENGINE_BATCH_MAGIC) return ENGINE_BATCH_CORRUPT;
    uint64_t t = (uint64_t)batch_length + ENGINE_BATCH_LENGTH_OVERHEAD;
    if (t > avail) return ENGINE_BATCH_TRUNCATED;
    int32_t count = (int32_t)get_be32(p + ENGINE_BATCH_RECORDS_COUNT_OFFSET);
    int32_t last_delta = (int32_t)get_be32(p + ENGINE_BATCH_LAST_OFFSET_DELTA_OFFSET);
    if (count < 0 || last_delta < 0 || count > batch_length) return ENGINE_BATCH_CORRUPT;
    if (verify_crc && !crc_matches(p, t)) return ENGINE_BATCH_CORRUPT;
    *total = t;
    return ENGINE_BATCH_OK;
}

int engine_batch_check(const uint8_t *buf, uint64_t length, int64_t expected_offset, int flags,
                       engine_batch_check_t *out) {
    uint64_t pos = 0;
    int64_t expected = expected_offset;
    int problem = ENGINE_BATCH_INTACT;
    for (int first = 1; pos < length; first = 0) {
        const uint8_t *p = buf + pos;
        uint64_t total = 0;
        int64_t base = length - pos >= 8 ? (int64_t)get_be64(p) : -1;
        int64_t last = -1;
        if (check_batch(p, length - pos, 0, &total) != ENGINE_BATCH_OK) {
            problem = ENGINE_BATCH_BAD_SHAPE;
        } else {
            /* wrapping, not overflowing, when a damaged base offset is near INT64_MAX */
            last = (int64_t)((uint64_t)base + get_be32(p + ENGINE_BATCH_LAST_OFFSET_DELTA_OFFSET));
            int in_order;
            if (first) /* holds the offset asked for (or, with gaps allowed, comes after it) */
                in_order = last >= expected && (!(flags & ENGINE_CHECK_DENSE) || base <= expected);
            else
                in_order = (flags & ENGINE_CHECK_DENSE) ? base == expected : base >= expected;
            if ((flags & ENGINE_CHECK_CRC) && !crc_matches(p, total))
                problem = ENGINE_BATCH_BAD_CRC;
            else if (!in_order)
                problem = ENGINE_BATCH_BAD_OFFSETS;
        }
        if (problem != ENGINE_BATCH_INTACT) {
            out->position = pos;
            out->expected_offset = expected;
            out->base_offset = base;
            out->last_offset = last;
            return problem;
        }
        expected = (int64_t)((uint64_t)last + 1);
        pos += total;
    }
    return ENGINE_BATCH_INTACT;
}

int engine_batch_info(const uint8_t *p, uint64_t avail, int verify_crc, uint64_t position,
                      engine_batch_info_t *info) {
    uint64_t total;
    int code = check_batch(p, avail, verify_crc, &total);
    if (code != ENGINE_BATCH_OK) return code;
    info->position = position;
    info->base_offset = (int64_t)get_be64(p);
    info->last_offset =
        info->base_offset + (int32_t)get_be32(p + ENGINE_BATCH_LAST_OFFSET_DELTA_OFFSET);
    info->max_timestamp = (int64_t)get_be64(p + ENGINE_BATCH_MAX_TIMESTAMP_OFFSET);
    info->length = (int32_t)total;
    info->records_count = (int32_t)get_be32(p + ENGINE_BATCH_RECORDS_COUNT_OFFSET);
    info->attributes = (int16_t)get_be16(p + ENGINE_BATCH_ATTRIBUTES_OFFSET);
    info->reserved0 = 0;
    info->reserved1 = 0;
    return ENGINE_BATCH_OK;
}

int engine_batch_scan(const uint8_t *buf, uint64_t length, int verify_crc,
                      engine_batch_info_t *infos, int32_t max_batches,
                      int32_t *count, uint64_t *scanned) {
    uint64_t pos = 0;
    int32_t n = 0;
    int code = ENGINE_BATCH_OK;
    while (pos < length && n < max_batches) {
        code = engine_batch_info(buf + pos, length - pos, verify_crc, pos, &infos[n]);
        if (code != ENGINE_BATCH_OK) break;
        pos += (uint64_t)infos[n++].length;
    }
    *count = n;
    *scanned = pos;
    return code;
}

/* Decodes one record at p; fills info (positions relative to base). */
static int decode_record(const uint8_t *base, const uint8_t *p, const uint8_t *end,
                         int64_t base_offset, int64_t base_timestamp,
                         engine_record_info_t *info, const uint8_t **next) {
    int64_t body, ts_delta, off_delta, klen, vlen, hcount;
    size_t n = get_varlong(p, end, &body);
    if (!n || body < 0 || (uint64_t)body > (uint64_t)(end - p - n)) return ENGINE_BATCH_CORRUPT;
    p += n;
    const uint8_t *rend = p + body;
    p++; /* attributes */
    if (p > rend || !(n = get_varlong(p, rend, &ts_delta))) return ENGINE_BATCH_CORRUPT;
    p += n;
    if (!(n = get_varlong(p, rend, &off_delta))) return ENGINE_BATCH_CORRUPT;
    p += n;
    if (!(n = get_varlong(p, rend, &klen)) || klen < -1) return ENGINE_BATCH_CORRUPT;
    p += n;
    info->key_position = (uint32_t)(p - base);
    info->key_length = (int32_t)klen;
    if (klen > 0) {
        if (klen > rend - p) return ENGINE_BATCH_CORRUPT;
        p += klen;
    }
    if (!(n = get_varlong(p, rend, &vlen)) || vlen < -1) return ENGINE_BATCH_CORRUPT;
    p += n;
    info->value_position = (uint32_t)(p - base);
    info->value_length = (int32_t)vlen;
    if (vlen > 0) {
        if (vlen > rend - p) return ENGINE_BATCH_CORRUPT;
        p += vlen;
    }
    if (!(n = get_varlong(p, rend, &hcount)) || hcount < 0) return ENGINE_BATCH_CORRUPT;
    p += n;
    info->headers_position = (uint32_t)(p - base);
    info->headers_length = (uint32_t)(rend - p);
    info->header_count = (int32_t)hcount;
    info->offset = base_offset + off_delta;
    info->timestamp = base_timestamp + ts_delta;
    *next = rend;
    return ENGINE_BATCH_OK;
}

int engine_batch_decode(const uint8_t *buf, uint64_t length, uint64_t start, int64_t min_offset,
                        engine_record_info_t *out, int32_t max_records,
                        int32_t *count, uint64_t *consumed, int64_t *end_offset) {
    uint64_t pos = start;
    int32_t n = 0;
    *end_offset = -1;
    int code = ENGINE_BATCH_OK;
    while (pos < length) {
        uint64_t total;
        code = check_batch(buf + pos, length - pos, 0, &total);
        if (code != ENGINE_BATCH_OK) break;
        const uint8_t *p = buf + pos;
        int64_t base_offset = (int64_t)get_be64(p);
        int64_t last_offset =
            base_offset + (int32_t)get_be32(p + ENGINE_BATCH_LAST_OFFSET_DELTA_OFFSET);
        int16_t attributes = (int16_t)get_be16(p + ENGINE_BATCH_ATTRIBUTES_OFFSET);
        if (last_offset < min_offset || (attributes & ENGINE_BATCH_ATTR_CONTROL)) {
            pos += total;
            *end_offset = last_offset + 1;
            continue;
        }
        if (n >= max_records) break;
        if (attributes & ENGINE_BATCH_ATTR_COMPRESSION) {
            code = ENGINE_BATCH_CORRUPT;
            break;
        }
        int64_t base_timestamp = (int64_t)get_be64(p + ENGINE_BATCH_BASE_TIMESTAMP_OFFSET);
        int64_t producer_id = (int64_t)get_be64(p + ENGINE_BATCH_PRODUCER_ID_OFFSET);
        int32_t records = (int32_t)get_be32(p + ENGINE_BATCH_RECORDS_COUNT_OFFSET);
        const uint8_t *r = p + ENGINE_BATCH_HEADER_LENGTH;
        const uint8_t *end = p + total;
        int complete = 1;
        for (int32_t i = 0; i < records; i++) {
            engine_record_info_t info;
            const uint8_t *next;
            code = decode_record(buf, r, end, base_offset, base_timestamp, &info, &next);
            if (code != ENGINE_BATCH_OK) {
                *count = n;
                *consumed = pos;
                return code;
            }
            r = next;
            if (info.offset < min_offset) continue;
            if (n >= max_records) {
                complete = 0;
                break;
            }
            info.producer_id = producer_id;
            info.batch_attributes = attributes;
            info.reserved = 0;
            out[n++] = info;
        }
        if (!complete) break;
        pos += total;
        *end_offset = last_offset + 1;
    }
    *count = n;
    *consumed = pos;
    return code == ENGINE_BATCH_TRUNCATED && pos < length ? ENGINE_BATCH_TRUNCATED : code;
}

/* engine_batch_values without the CRC check. */
static int copy_values(const uint8_t *batch, uint64_t length, int64_t min_offset,
                       int32_t value_size, uint8_t *out, int32_t max_records,
                       int32_t *copied, int64_t *next_offset, int *complete,
                       int64_t *bad_offset) {
    uint64_t total;
    *copied = 0;
    *complete = 0;
    int code = check_batch(batch, length, 0, &total);
    if (code != ENGINE_BATCH_OK || total != length) return ENGINE_BATCH_CORRUPT;
    int64_t base_offset = (int64_t)get_be64(batch);
    int64_t last_offset =
        base_offset + (int32_t)get_be32(batch + ENGINE_BATCH_LAST_OFFSET_DELTA_OFFSET);
    int64_t after = last_offset + 1 > min_offset ? last_offset + 1 : min_offset;
    int16_t attributes = (int16_t)get_be16(batch + ENGINE_BATCH_ATTRIBUTES_OFFSET);
    if (last_offset < min_offset || (attributes & ENGINE_BATCH_ATTR_CONTROL)) {
        *next_offset = after;
        *complete = 1;
        return ENGINE_BATCH_OK;
    }
    if (attributes & ENGINE_BATCH_ATTR_COMPRESSION) return ENGINE_BATCH_CORRUPT;
    int64_t base_timestamp = (int64_t)get_be64(batch + ENGINE_BATCH_BASE_TIMESTAMP_OFFSET);
    int32_t records = (int32_t)get_be32(batch + ENGINE_BATCH_RECORDS_COUNT_OFFSET);
    const uint8_t *r = batch + ENGINE_BATCH_HEADER_LENGTH, *end = batch + total;
    int32_t n = 0;
    *next_offset = min_offset;
    for (int32_t i = 0; i < records; i++) {
        engine_record_info_t info;
        const uint8_t *next;
        code = decode_record(batch, r, end, base_offset, base_timestamp, &info, &next);
        if (code != ENGINE_BATCH_OK) {
            *copied = n;
            return code;
        }
        r = next;
        if (info.offset < min_offset) continue;
        if (n >= max_records) {
            *copied = n;
            return ENGINE_BATCH_OK; /* not complete: the rest next time */
        }
        if (info.value_length != value_size) {
            *copied = n;
            *bad_offset = info.offset;
            return ENGINE_BATCH_VALUE_SIZE;
        }
        memcpy(out + (size_t)n * (size_t)value_size, batch + info.value_position,
               (size_t)value_size);
        n++;
        *next_offset = info.offset + 1;
    }
    *copied = n;
    *next_offset = after;
    *complete = 1;
    return ENGINE_BATCH_OK;
}

int engine_batch_values(const uint8_t *batch, uint64_t length, int64_t min_offset,
                        int32_t value_size, uint8_t *out, int32_t max_records,
                        int32_t *copied, int64_t *next_offset, int *complete,
                        int64_t *bad_offset, int verify_crc) {
    int code = copy_values(batch, length, min_offset, value_size, out, max_records, copied,
                           next_offset, complete, bad_offset);
    /* The CRC after the copy, over a batch the copy has just brought into the cache (one
     * pass over memory, not two): what was copied counts only if it matches. */
    if (verify_crc && (code == ENGINE_BATCH_OK || code == ENGINE_BATCH_VALUE_SIZE) &&
        !crc_matches(batch, length)) {
        *copied = 0;
        *complete = 0;
        return ENGINE_BATCH_CORRUPT;
    }
    return code;
}

uint64_t engine_batch_first_compressed(const uint8_t *buf, uint64_t length) {
    uint64_t pos = 0;
    while (pos < length && length - pos >= ENGINE_BATCH_HEADER_LENGTH) {
        const uint8_t *p = buf + pos;
        if (get_be16(p + ENGINE_BATCH_ATTRIBUTES_OFFSET) & ENGINE_BATCH_ATTR_COMPRESSION)
            return pos;
        int32_t batch_length = (int32_t)get_be32(p + ENGINE_BATCH_LENGTH_OFFSET);
        if (batch_length < ENGINE_BATCH_HEADER_LENGTH - ENGINE_BATCH_LENGTH_OVERHEAD) break;
        pos += (uint64_t)batch_length + ENGINE_BATCH_LENGTH_OVERHEAD;
    }
    return length;
}

int32_t engine_batch_copy_values(const uint8_t *buf, const engine_record_info_t *infos,
                                 int32_t count, int32_t value_size, uint8_t *out) {
    for (int32_t i = 0; i < count; i++) {
        if (infos[i].value_length != value_size) return i;
        memcpy(out + (size_t)i * (size_t)value_size, buf + infos[i].value_position,
               (size_t)value_size);
    }
    return -1;
}
