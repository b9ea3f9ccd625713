/*
 * segment.h - a log segment's append plan: which batches of a drained chunk go
 * into the active segment, and the index entries that point at them.
 *
 * engine/segment.py keeps the segment (files, state); it calls these to decide,
 * then writes the bytes. The rules are the ones its docstring states:
 *
 *  - a batch goes into the segment unless the segment would pass segment.bytes,
 *    its last offset would pass base_offset + 2^31 - 1, the indexes are full, or
 *    its max_timestamp is more than segment.ms after the segment's first batch's
 *    (rolling_timestamp); an empty segment takes at least one batch;
 *  - a batch gets an index entry when it starts in another index.interval.bytes
 *    block of the .log file than the batch before it (every batch at interval 0);
 *  - beside each offset-index entry, a time-index entry when the running maximum
 *    of batch max_timestamps grew past the last time-index entry.
 *
 * Index entries, big-endian, as stored (version 1; offset_index.py and
 * time_index.py draw them, log.meta names the version):
 *
 *   offset index (8 bytes)            time index (12 bytes)
 *   +------------------+----------+   +-----------------------+------------------+
 *   | relative_offset  | position |   | timestamp (int64, ms) | relative_offset  |
 *   | (uint32)         | (uint32) |   |                       | (uint32)         |
 *   +------------------+----------+   +-----------------------+------------------+
 *   0                  4          8   0                       8                  12
 *
 * relative_offset = batch base_offset - segment base_offset; position is the
 * batch's byte position in the .log file.
 */
#ifndef ENGINE_SEGMENT_H
#define ENGINE_SEGMENT_H

#include <stdint.h>

#include "batch.h"

#define ENGINE_OFFSET_INDEX_ENTRY_LENGTH 8
#define ENGINE_TIME_INDEX_ENTRY_LENGTH 12
/* Offsets in a segment stay within base_offset + this (Kafka: Int.MaxValue). */
#define ENGINE_SEGMENT_MAX_RELATIVE_OFFSET 2147483647LL

/* The writer's view of the active segment. engine_segment_plan advances it as
 * if the planned batches and entries were written; the caller copies it back
 * only after they were. */
typedef struct engine_segment_state {
    int64_t base_offset;
    int64_t next_offset;            /* last offset + 1; base_offset when empty */
    int64_t size;                   /* bytes of the .log file */
    int64_t last_batch_position;    /* -1: empty */
    int64_t last_batch_base_offset; /* -1: empty */
    int64_t max_timestamp;          /* largest batch max_timestamp; -1: empty */
    int64_t rolling_timestamp;      /* the first batch's max_timestamp; -1: empty */
    int64_t time_index_last;        /* the last time-index timestamp; -1: none */
    int64_t index_room;             /* index entries that may still be added */
} engine_segment_state_t;

typedef struct engine_segment_limits {
    int64_t segment_bytes;
    int64_t segment_ms;
    int64_t index_interval_bytes;   /* <= 0: an entry for every batch */
} engine_segment_limits_t;

/* What engine_batch_check_order found in a chunk of batches. */
typedef struct engine_batch_order {
    int32_t bad_batch;       /* the first batch out of order, -1: none */
    int32_t largest_length;  /* the largest batch, bytes */
    int64_t records;         /* records in all batches */
} engine_batch_order_t;

enum engine_batch_order_code {
    ENGINE_ORDER_OK = 0,
    ENGINE_ORDER_BELOW_START = 1, /* batch 0's base_offset is below next_offset */
    ENGINE_ORDER_NOT_INCREASING = 2, /* a base_offset not above the previous last_offset */
    ENGINE_ORDER_TOO_WIDE = 3,    /* a batch spanning more than 2^31 - 1 offsets */
};

/* Checks that count scanned batches may be appended at next_offset: offsets
 * increase from it, no batch spans more than 2^31 - 1 offsets. Fills *order
 * (bad_batch names the batch of a non-OK code). */
int engine_batch_check_order(const engine_batch_info_t *infos, int32_t count,
                             int64_t next_offset, engine_batch_order_t *order);

/* Plans the leading batches of infos (checked; where they lie does not matter: in
 * the file they go back to back, from state->size on) that go into the segment: returns
 * how many (0: roll first), writes their index entries to offset_entries and
 * time_entries (room for max_entries each; a full buffer ends the plan early),
 * counts them in *offset_count and *time_count, and advances *state. */
int32_t engine_segment_plan(const engine_batch_info_t *infos, int32_t count,
                            const engine_segment_limits_t *limits,
                            engine_segment_state_t *state,
                            uint8_t *offset_entries, uint8_t *time_entries,
                            int32_t max_entries, int32_t *offset_count, int32_t *time_count);

/* Write batches infos[0..count) of base (their positions index base; they need
 * not lie back to back there) to fd at file_offset, one after the other, with as few
 * pwritev calls as there are WRITE_IOVECS batches: no copy. 0, or -errno. */
int engine_batches_write(int fd, const uint8_t *base, const engine_batch_info_t *infos,
                         int32_t count, int64_t file_offset);

#endif
