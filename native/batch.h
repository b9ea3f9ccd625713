/*
 * batch.h - the record batch: Kafka's RecordBatch, magic 2, byte for byte.
 *
 * Every record the engine stores, in a ring or in a segment file, lives in a
 * batch of this exact format, so that a future Kafka wire-protocol listener can
 * serve fetches straight from the log. All integers are big-endian; the batch
 * header is 61 bytes and its fields are not aligned.
 *
 *  0                   1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +---------------------------------------------------------------+  0
 * |                     base_offset (int64)                       |
 * |                                                               |
 * +---------------------------------------------------------------+  8
 * |        batch_length (int32): bytes after this field           |
 * +---------------------------------------------------------------+ 12
 * |        partition_leader_epoch (int32)                         |
 * +---------------+-----------------------------------------------+ 16
 * | magic (2)     |  crc (uint32, CRC32C of bytes 21..end) ...    |
 * +---------------+---------------+-------------------------------+ 20
 * | ... crc       | attributes (int16)            | last_offset_  |
 * +---------------+-------------------------------+---------------+ 24
 * |  delta (int32): records - 1                   | base_timestamp|
 * +-----------------------------------------------+---------------+ 28
 * |        ... base_timestamp (int64, ms)                         |
 * +---------------------------------------------------------------+ 35
 * |        max_timestamp (int64, ms)                              |
 * +---------------------------------------------------------------+ 43
 * |        producer_id (int64, -1 = none)                         |
 * +-------------------------------+-------------------------------+ 51
 * | producer_epoch (int16)        | base_sequence (int32) ...     |
 * +-------------------------------+-------------------------------+ 57
 * |        records_count (int32)                                  |
 * +---------------------------------------------------------------+ 61
 * |        records ...                                            |
 *
 * attributes: bits 0-2 compression (0 = none, the only one the engine's C
 *               writes; 1-4 gzip, snappy, lz4, zstd: the records after the header
 *               are one compressed block, stored as a Kafka client sent it and
 *               made plain by engine/compression.py before any record is decoded;
 *               the decoders here refuse such a batch as corrupt),
 *             bit 3 timestamp type (0 = create time),
 *             bit 4 is_transactional, bit 5 is_control (transaction marker).
 *
 * A record (zigzag varints, as Kafka):
 *   length varint | attributes int8 | timestamp_delta varlong |
 *   offset_delta varint | key_length varint (-1 = null) | key |
 *   value_length varint (-1 = null) | value | header_count varint |
 *   headers: { key_length varint | key | value_length varint | value } ...
 *
 * Version: this is Kafka's magic 2, the only magic the engine reads or writes;
 * a batch with any other magic is rejected as corrupt.
 */
#ifndef ENGINE_BATCH_H
#define ENGINE_BATCH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ENGINE_BATCH_MAGIC 2
#define ENGINE_BATCH_HEADER_LENGTH 61
#define ENGINE_BATCH_BASE_OFFSET_OFFSET 0
#define ENGINE_BATCH_LENGTH_OFFSET 8
#define ENGINE_BATCH_LEADER_EPOCH_OFFSET 12
#define ENGINE_BATCH_MAGIC_OFFSET 16
#define ENGINE_BATCH_CRC_OFFSET 17
#define ENGINE_BATCH_ATTRIBUTES_OFFSET 21
#define ENGINE_BATCH_LAST_OFFSET_DELTA_OFFSET 23
#define ENGINE_BATCH_BASE_TIMESTAMP_OFFSET 27
#define ENGINE_BATCH_MAX_TIMESTAMP_OFFSET 35
#define ENGINE_BATCH_PRODUCER_ID_OFFSET 43
#define ENGINE_BATCH_PRODUCER_EPOCH_OFFSET 51
#define ENGINE_BATCH_BASE_SEQUENCE_OFFSET 53
#define ENGINE_BATCH_RECORDS_COUNT_OFFSET 57
/* batch_length counts the bytes after its own field: total = batch_length + 12 */
#define ENGINE_BATCH_LENGTH_OVERHEAD 12

/* Big-endian loads and stores at any alignment (every integer of a batch and
 * of the index files is big-endian). */
static inline void put_be16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static inline void put_be32(uint8_t *p, uint32_t v) {
    v = __builtin_bswap32(v);
    memcpy(p, &v, 4);
}
static inline void put_be64(uint8_t *p, uint64_t v) {
    v = __builtin_bswap64(v);
    memcpy(p, &v, 8);
}
static inline uint32_t get_be32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return __builtin_bswap32(v);
}
static inline uint64_t get_be64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
}
static inline uint16_t get_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

#define ENGINE_BATCH_ATTR_COMPRESSION 0x07
#define ENGINE_BATCH_ATTR_TRANSACTIONAL 0x10
#define ENGINE_BATCH_ATTR_CONTROL 0x20

/* Producer identity and fencing written into a batch header, and how long an
 * append may wait for ring space. Lives in the producer's own memory. */
typedef struct engine_producer_fields {
    int64_t producer_id;    /* -1: not idempotent */
    int32_t base_sequence;  /* -1: none */
    int16_t producer_epoch; /* -1: none */
    int16_t attributes;     /* transactional / control bits */
    int32_t leader_epoch;   /* written as partition_leader_epoch; -1 = ring's */
    int32_t min_insync;     /* refuse the append below this many in-sync replicas (0: any) */
    int64_t timeout_ns;     /* max wait for ring space (engine_ring_append_value) */
} engine_producer_fields_t;

/* One batch found by engine_batch_scan. */
typedef struct engine_batch_info {
    uint64_t position;      /* byte position of the batch in the buffer */
    int64_t base_offset;
    int64_t last_offset;
    int64_t max_timestamp;
    int32_t length;         /* total bytes, header included */
    int32_t records_count;
    int16_t attributes;
    int16_t reserved0;
    int32_t reserved1;
} engine_batch_info_t;

/* One record found by engine_batch_decode; positions index the buffer. */
typedef struct engine_record_info {
    int64_t offset;
    int64_t timestamp;
    int64_t producer_id;
    uint32_t key_position;
    int32_t key_length;     /* -1: null key */
    uint32_t value_position;
    int32_t value_length;   /* -1: null value */
    uint32_t headers_position;
    uint32_t headers_length;
    int32_t header_count;
    int16_t batch_attributes;
    int16_t reserved;
} engine_record_info_t;

/* ---- encoding one record: inline, so that the batch loop in ring.c can be
 * specialised by the compiler (no keys, no headers, fixed sizes). ---- */

static inline size_t engine_varlong_length(int64_t v) {
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    size_t n = 1;
    while (z >= 0x80) {
        z >>= 7;
        n++;
    }
    return n;
}
static inline size_t engine_put_varlong(uint8_t *p, int64_t v) {
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    size_t n = 0;
    while (z >= 0x80) {
        p[n++] = (uint8_t)(z | 0x80);
        z >>= 7;
    }
    p[n++] = (uint8_t)z;
    return n;
}
/* Length of one encoded record (its length prefix included). */
static inline size_t engine_batch_record_length(int64_t timestamp_delta, int32_t offset_delta,
                                  int32_t key_length, int32_t value_length,
                                  int32_t headers_length, int32_t header_count) {
    size_t body = 1 + engine_varlong_length(timestamp_delta) + engine_varlong_length(offset_delta) +
                  engine_varlong_length(key_length) + (key_length > 0 ? (size_t)key_length : 0) +
                  engine_varlong_length(value_length) + (value_length > 0 ? (size_t)value_length : 0) +
                  engine_varlong_length(header_count) + (size_t)headers_length;
    return engine_varlong_length((int64_t)body) + body;
}

static inline size_t engine_batch_write_record(uint8_t *out, int64_t timestamp_delta, int32_t offset_delta,
                                 const uint8_t *key, int32_t key_length,
                                 const uint8_t *value, int32_t value_length,
                                 const uint8_t *headers, int32_t headers_length,
                                 int32_t header_count) {
    size_t body = 1 + engine_varlong_length(timestamp_delta) + engine_varlong_length(offset_delta) +
                  engine_varlong_length(key_length) + (key_length > 0 ? (size_t)key_length : 0) +
                  engine_varlong_length(value_length) + (value_length > 0 ? (size_t)value_length : 0) +
                  engine_varlong_length(header_count) + (size_t)headers_length;
    uint8_t *p = out;
    p += engine_put_varlong(p, (int64_t)body);
    *p++ = 0; /* record attributes: unused by Kafka */
    p += engine_put_varlong(p, timestamp_delta);
    p += engine_put_varlong(p, offset_delta);
    p += engine_put_varlong(p, key_length);
    if (key_length > 0) {
        memcpy(p, key, (size_t)key_length);
        p += key_length;
    }
    p += engine_put_varlong(p, value_length);
    if (value_length > 0) {
        memcpy(p, value, (size_t)value_length);
        p += value_length;
    }
    p += engine_put_varlong(p, header_count);
    if (headers_length > 0) {
        memcpy(p, headers, (size_t)headers_length);
        p += headers_length;
    }
    return (size_t)(p - out);
}

/* Fills the 61-byte header of a batch whose records are already written at
 * batch + 61, and computes its CRC. */
void engine_batch_write_header(uint8_t *batch, size_t total_length, int64_t base_offset,
                               int32_t records_count, int64_t base_timestamp,
                               int64_t max_timestamp, const engine_producer_fields_t *fields);

/* Codes returned by scan/decode. */
enum engine_batch_code {
    ENGINE_BATCH_OK = 0,
    ENGINE_BATCH_TRUNCATED = 1,   /* the buffer ends inside a batch */
    ENGINE_BATCH_CORRUPT = 2,     /* bad magic, bad length, CRC mismatch, bad record */
    ENGINE_BATCH_VALUE_SIZE = 3,  /* engine_batch_values: a value of another size */
};

/* The values of one batch (length bytes at batch, exactly one batch), for readers
 * of fixed-size records: copies the value of every record at or above
 * min_offset into out, value_size bytes each, at most max_records of them.
 * A control batch gives none. *copied: how many; *next_offset: the offset after
 * the last record copied, or after the batch when *complete (every record at or
 * above min_offset copied). VALUE_SIZE: a record's value (at *bad_offset) is
 * not value_size bytes; the ones before it were copied (*copied, *next_offset).
 * verify_crc: 1 checks the batch's CRC32C first (CORRUPT, nothing copied).
 * A compressed batch is CORRUPT (nothing copied): the caller's slower path makes
 * it plain. */
int engine_batch_values(const uint8_t *batch, uint64_t length, int64_t min_offset,
                        int32_t value_size, uint8_t *out, int32_t max_records,
                        int32_t *copied, int64_t *next_offset, int *complete,
                        int64_t *bad_offset, int verify_crc);

/* ---- checking what a reader is about to deliver ------------------------
 *
 * A chunk of batches read from a ring or a segment, before a consumer decodes
 * it: each batch whole (magic 2, a possible length, inside the chunk), its
 * CRC32C matching (ENGINE_CHECK_CRC), and its offsets in sequence. The CRC
 * covers attributes..end only, not base_offset: a damaged base offset shows
 * only as offsets out of sequence. The first batch must hold the offset asked
 * for, or (without ENGINE_CHECK_DENSE) come after it; each later batch must
 * start right after the one before it (ENGINE_CHECK_DENSE: a log that fills
 * every skipped offset with an empty batch, log.py format 2), or at least
 * after it (a ring, where a reaped frame's offsets are skipped).
 */
#define ENGINE_CHECK_CRC 1
#define ENGINE_CHECK_DENSE 2

/* What engine_batch_check found; the codes are mirrored by engine/record_batch.py
 * (BatchProblem), and a test holds the two together. */
enum engine_batch_problem {
    ENGINE_BATCH_INTACT = 0,
    ENGINE_BATCH_BAD_SHAPE = 1,   /* not a whole magic-2 batch (magic, length, cut short) */
    ENGINE_BATCH_BAD_CRC = 2,     /* the CRC32C does not match */
    ENGINE_BATCH_BAD_OFFSETS = 3, /* offsets out of sequence */
};

typedef struct engine_batch_check {
    uint64_t position;       /* of the first bad batch: whole good batches end here */
    int64_t expected_offset; /* the offset that batch had to hold (the first) or start at */
    int64_t base_offset;     /* its base offset as stored; -1 when not 8 bytes are there */
    int64_t last_offset;     /* its last offset as stored; -1 when no whole header */
} engine_batch_check_t;

/* Checks the batches of buf (a chunk a reader is about to deliver, asked for at
 * expected_offset) as described above; returns INTACT, or the first problem
 * with *out describing the batch it was found in. */
int engine_batch_check(const uint8_t *buf, uint64_t length, int64_t expected_offset, int flags,
                       engine_batch_check_t *out);

/* Walks whole batches from buf[0]; fills up to max_batches infos; *scanned is
 * the byte length of the intact prefix. verify_crc: 1 checks every CRC.
 * Returns ENGINE_BATCH_OK when the buffer ends exactly at a batch boundary,
 * else the reason the walk stopped. *count is the number of infos filled. */
/* Checks the batch at p (avail bytes there; its CRC too when verify_crc) and
 * describes it in *info, at ``position``: ENGINE_BATCH_OK, TRUNCATED or CORRUPT. */
int engine_batch_info(const uint8_t *p, uint64_t avail, int verify_crc, uint64_t position,
                      engine_batch_info_t *info);

int engine_batch_scan(const uint8_t *buf, uint64_t length, int verify_crc,
                      engine_batch_info_t *infos, int32_t max_batches,
                      int32_t *count, uint64_t *scanned);

/* Decodes records of consecutive batches in buf, skipping records below
 * min_offset and control batches, from byte position start (a batch boundary).
 * Stops at max_records; *consumed is the byte position (from buf, like every
 * position) of the first batch not completely delivered; *end_offset is one
 * past the last offset of the batch that ends there (delivered or skipped: a
 * reader's next offset once it has used the buffer up to *consumed), -1 when
 * no batch was walked completely. A compressed batch is CORRUPT here (it is made
 * plain first: engine/compression.py), as at *consumed. */
int engine_batch_decode(const uint8_t *buf, uint64_t length, uint64_t start, int64_t min_offset,
                        engine_record_info_t *out, int32_t max_records,
                        int32_t *count, uint64_t *consumed, int64_t *end_offset);

/* The byte position of the first compressed batch among the whole batches of
 * buf, or length when there is none (a walk over the headers' lengths: the
 * batches are checked already). */
uint64_t engine_batch_first_compressed(const uint8_t *buf, uint64_t length);

/* Copies the values of count decoded records, each value_size bytes, back to back
 * into out. Returns -1, or the index of the first record whose value is not
 * value_size bytes (the records before it are copied). */
int32_t engine_batch_copy_values(const uint8_t *buf, const engine_record_info_t *infos,
                                 int32_t count, int32_t value_size, uint8_t *out);

#endif
