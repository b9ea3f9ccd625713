"""cffi build script for the hot path: `engine._native`.

Compiled at install time through `cffi_modules` in pyproject.toml; never at import.
The cdef below repeats the public declarations of ring.h, batch.h and segment.h that
Python calls.
"""

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

CDEF = """
typedef struct engine_producer_fields {
    int64_t producer_id; int32_t base_sequence; int16_t producer_epoch;
    int16_t attributes; int32_t leader_epoch; int32_t min_insync; int64_t timeout_ns;
} engine_producer_fields_t;

typedef struct engine_batch_info {
    uint64_t position; int64_t base_offset; int64_t last_offset; int64_t max_timestamp;
    int32_t length; int32_t records_count; int16_t attributes; int16_t reserved0;
    int32_t reserved1;
} engine_batch_info_t;

typedef struct engine_record_info {
    int64_t offset; int64_t timestamp; int64_t producer_id;
    uint32_t key_position; int32_t key_length; uint32_t value_position; int32_t value_length;
    uint32_t headers_position; uint32_t headers_length; int32_t header_count;
    int16_t batch_attributes; int16_t reserved;
} engine_record_info_t;

typedef struct engine_segment_state {
    int64_t base_offset; int64_t next_offset; int64_t size; int64_t last_batch_position;
    int64_t last_batch_base_offset; int64_t max_timestamp; int64_t rolling_timestamp;
    int64_t time_index_last; int64_t index_room;
} engine_segment_state_t;

typedef struct engine_segment_limits {
    int64_t segment_bytes; int64_t segment_ms; int64_t index_interval_bytes;
} engine_segment_limits_t;

typedef struct engine_batch_order {
    int32_t bad_batch; int32_t largest_length; int64_t records;
} engine_batch_order_t;

enum engine_batch_order_code {
    ENGINE_ORDER_OK = 0, ENGINE_ORDER_BELOW_START = 1, ENGINE_ORDER_NOT_INCREASING = 2,
    ENGINE_ORDER_TOO_WIDE = 3,
};

#define ENGINE_OFFSET_INDEX_ENTRY_LENGTH ...
#define ENGINE_TIME_INDEX_ENTRY_LENGTH ...
#define ENGINE_SEGMENT_MAX_RELATIVE_OFFSET ...

int engine_batch_check_order(const engine_batch_info_t *infos, int32_t count,
                             int64_t next_offset, engine_batch_order_t *order);
int32_t engine_segment_plan(const engine_batch_info_t *infos, int32_t count,
                            const engine_segment_limits_t *limits,
                            engine_segment_state_t *state,
                            uint8_t *offset_entries, uint8_t *time_entries,
                            int32_t max_entries, int32_t *offset_count, int32_t *time_count);
int engine_batches_write(int fd, const uint8_t *base, const engine_batch_info_t *infos,
                         int32_t count, int64_t file_offset);

typedef struct engine_cursor { uint64_t position; int64_t offset; } engine_cursor_t;

typedef struct engine_ring_status {
    uint64_t capacity; uint64_t tail_position; int64_t tail_offset;
    uint64_t drain_position; int64_t drain_offset; int64_t base_offset;
    int32_t leader_epoch; uint32_t sealed; int64_t high_watermark;
    uint32_t isr_count; uint32_t reserved;
    uint64_t reaped_frames; uint64_t full_waits;
    uint32_t publish_waiters; uint32_t space_waiters;
    uint64_t read_offsets; uint64_t read_bytes;
} engine_ring_status_t;

#define ENGINE_RING_VERSION ...
#define ENGINE_RING_HEADER_LENGTH ...
#define ENGINE_RING_MIN_CAPACITY ...
#define ENGINE_RING_MAX_CAPACITY ...
#define ENGINE_FRAME_HEADER_LENGTH ...
#define ENGINE_BATCH_HEADER_LENGTH ...

int engine_ring_init(void *region, uint64_t region_length, uint64_t capacity,
                     uint64_t max_frame_length, int64_t base_offset,
                     int64_t stall_timeout_ns, int32_t leader_epoch, uint32_t sealed);
int engine_ring_check(const void *region, uint64_t region_length);
uint64_t engine_ring_region_length(uint64_t capacity);
int64_t engine_ring_append(void *region, const engine_producer_fields_t *fields,
                       int64_t timestamp_ms, const char *key, int32_t key_length,
                       const char *value, int32_t value_length,
                       const char *headers, int32_t headers_length, int32_t header_count,
                       int64_t timeout_ns);
int64_t engine_ring_append_value(void *region, const engine_producer_fields_t *fields,
                                 int64_t timestamp_ms, const char *key, int32_t key_length,
                                 const char *value, int32_t value_length);
typedef struct engine_route {
    const engine_producer_fields_t *fields;
    void *const *regions;
    int32_t partition_count;
    int32_t sticky_partition;
    int64_t sticky_bytes;
    int64_t batch_bytes;
    int64_t max_record_bytes;
    uint64_t random_state;
    int32_t last_partition;
    int32_t reserved;
    int64_t last_timestamp_ms;
} engine_route_t;
int64_t engine_ring_send(engine_route_t *route, int32_t partition, const char *key,
                         int32_t key_length, const char *value, int32_t value_length);
int32_t engine_route_pick(engine_route_t *route, int32_t partition, const char *key,
                          int32_t key_length, int32_t value_length);
int64_t engine_ring_append_encoded(void *region, const engine_producer_fields_t *fields,
                                   const uint8_t *records, uint64_t length, int32_t count,
                                   int64_t base_timestamp, int64_t max_timestamp,
                                   int64_t timeout_ns);
int64_t engine_ring_append_client(void *region, const engine_producer_fields_t *fields,
                                  const uint8_t *batch, uint64_t length, int64_t timeout_ns);
int engine_route_append_keyed(engine_route_t *route, int64_t timestamp_ms, int32_t count,
                              const char *keys, int32_t key_stride,
                              const char *values, int32_t value_stride,
                              int64_t timeout_ns, int32_t *scratch, int64_t *out_offsets,
                              int32_t *out_appended, int32_t *out_codes,
                              int64_t *out_last_offsets);
int engine_ring_append_batch(void *region, const engine_producer_fields_t *fields,
                             int64_t timestamp_ms, const int64_t *timestamps_ms, int32_t count,
                             const char *keys, const int32_t *key_lengths, int32_t key_stride,
                             const char *values, const int32_t *value_lengths,
                             int32_t value_stride, const char *headers,
                             const int32_t *header_lengths, const int32_t *header_counts,
                             int64_t timeout_ns, int64_t *out_offsets,
                             int32_t *out_appended);
int engine_ring_read(void *region, engine_cursor_t *cursor, char *out,
                     uint64_t out_capacity, uint64_t *out_length, int64_t max_offset);
void engine_ring_count_read(void *region, int64_t offsets, uint64_t bytes);
int engine_ring_wait(void *region, const engine_cursor_t *cursor, int64_t timeout_ns,
                     int respect_hw, int64_t spin_ns);
int32_t engine_ring_ready_many(void **regions, engine_cursor_t **cursors, int32_t count,
                               uint8_t *ready);
int engine_ring_wait_any(void **regions, const engine_cursor_t *cursors, int32_t count,
                         int64_t timeout_ns, int respect_hw, int64_t spin_ns);
int engine_ring_seek(void *region, int64_t offset, engine_cursor_t *cursor);
int engine_ring_drain_to(void *region, uint64_t position, int64_t offset);
void engine_ring_drain_cursor(void *region, engine_cursor_t *cursor);
void engine_ring_set_leader(void *region, int32_t leader_epoch, uint32_t sealed);
void engine_ring_set_high_watermark(void *region, int64_t high_watermark);
void engine_ring_set_isr_count(void *region, uint32_t isr_count);
/* Wake every process waiting on the ring (a stopping replica's own threads). */
void engine_ring_wake(void *region);
int engine_ring_wait_full(void *region, uint64_t full_waits_seen, int64_t timeout_ns);
int engine_ring_fence(void *region, int64_t producer_id, int32_t epoch);
int32_t engine_ring_producer_epoch(void *region, int64_t producer_id);
int engine_ring_append_raw(void *region, const char *batches, uint64_t length,
                           int64_t timeout_ns);
void engine_ring_advance(void *region, engine_cursor_t *cursor);
int engine_replica_follow(void *leader, engine_cursor_t *cursor, void *follower, char *buf,
                          uint64_t buf_length, int64_t timeout_ns, int64_t pause_ns,
                          int64_t append_timeout_ns, const volatile uint32_t *stop,
                          uint64_t *needed_length);
int engine_replica_track(void *leader, engine_cursor_t *published, void **followers,
                         int32_t count, const uint8_t *in_isr, int32_t leader_epoch,
                         int64_t *ends, int64_t *caught_up_ns, int64_t timeout_ns,
                         int64_t pause_ns, const volatile uint32_t *stop);
int engine_ring_wait_high_watermark(void *region, int64_t offset, int64_t timeout_ns);
void engine_ring_status(void *region, engine_ring_status_t *out);
uint32_t engine_ring_sealed(void *region);
int32_t engine_ring_poll_values(void **regions, engine_cursor_t **cursors,
                                int64_t *next_offsets, int32_t *codes, int32_t *copied,
                                int32_t *touched, int32_t count, int32_t first,
                                int32_t value_size, char *out, int32_t max_records,
                                int64_t timeout_ns, int64_t max_spin_ns, int64_t *spin_ns,
                                int verify_crc);
int64_t engine_ring_claim_for_test(void *region, uint32_t frame_length, int stamp);
uint32_t engine_crc32c(uint32_t crc, const void *data, size_t length);
int32_t engine_murmur2(const void *data, int32_t length);
void engine_partition_many(const char *keys, const int32_t *key_lengths, int32_t key_stride,
                           int32_t count, int32_t partitions, int32_t *out);
void engine_scatter_by_partition(const char *values, int32_t value_stride, const char *keys,
                                 int32_t key_stride, const int32_t *parts, int32_t count,
                                 int32_t partitions, char *out_values, char *out_keys,
                                 int32_t *out_counts, int32_t *out_index);
int engine_batch_scan(const uint8_t *buf, uint64_t length, int verify_crc,
                      engine_batch_info_t *infos, int32_t max_batches,
                      int32_t *count, uint64_t *scanned);
int engine_ring_peek(void *region, engine_cursor_t *cursor, int64_t max_offset,
                     uint64_t max_bytes, engine_batch_info_t *infos, int32_t max_batches,
                     int32_t *out_count);
int engine_batch_decode(const uint8_t *buf, uint64_t length, uint64_t start, int64_t min_offset,
                        engine_record_info_t *out, int32_t max_records,
                        int32_t *count, uint64_t *consumed, int64_t *end_offset);
int32_t engine_batch_copy_values(const uint8_t *buf, const engine_record_info_t *infos,
                                 int32_t count, int32_t value_size, uint8_t *out);
uint64_t engine_batch_first_compressed(const uint8_t *buf, uint64_t length);

#define ENGINE_CHECK_CRC ...
#define ENGINE_CHECK_DENSE ...
enum engine_batch_problem {
    ENGINE_BATCH_INTACT = 0, ENGINE_BATCH_BAD_SHAPE = 1, ENGINE_BATCH_BAD_CRC = 2,
    ENGINE_BATCH_BAD_OFFSETS = 3,
};
typedef struct engine_batch_check {
    uint64_t position; int64_t expected_offset; int64_t base_offset; int64_t last_offset;
} engine_batch_check_t;
int engine_batch_check(const uint8_t *buf, uint64_t length, int64_t expected_offset, int flags,
                       engine_batch_check_t *out);
"""

ffi = FFI()
ffi.cdef(CDEF)
ffi.set_source(
    "engine._native",
    '#include "ring.h"\n#include "batch.h"\n#include "segment.h"\n',
    # setuptools wants paths relative to the project root
    sources=[
        os.path.relpath(HERE / name)
        for name in ("ring.c", "batch.c", "hash.c", "replicate.c", "segment.c")
    ],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffi.compile(tmpdir=str(HERE.parent / "build"), verbose=True)
