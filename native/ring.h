/*
 * ring.h - a partition's shared-memory ring: layout, then operations.
 *
 * One POSIX shared-memory object per partition replica. Many producer
 * processes append to it at once, many consumer processes read it at once,
 * and the owning broker drains it into segment files. Nothing here takes a
 * lock: space and offsets are claimed by one compare-and-swap on one word.
 *
 * Region:
 *   +----------------------------------+ 0
 *   | ring header (4096 bytes)         |  descriptor, claim word, drain
 *   |                                  |  cursor, wake-up words, control
 *   +----------------------------------+ 4096
 *   | data: capacity bytes (a power    |  frames, 8-byte aligned, back to
 *   | of two); frames wrap around      |  back; padding at the wrap
 *   +----------------------------------+ 4096 + capacity
 *
 * Ring header, version 4 (one field group per 128-byte line so that hot
 * words written by different processes never share a cache line). Version 3
 * added hw_seq: high-watermark waiters (acks="all" producers, readers of a
 * replicated ring) sleep there, woken when it rises, not by every append;
 * publish_seq wakes those who read up to the tail (followers, the leader's
 * high-watermark loop, readers of a ring without replication). Version 4
 * added full_seq: the broker's drain sleeps there between passes, and a
 * producer that finds the ring full wakes it at once.
 *
 *  0                   1                   2                   3
 *  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
 * +---------------------------------------------------------------+    0
 * | version: stored last at creation, the "ready" signal          |
 * +---------------------------------------------------------------+    4
 * | header_length (4096)                                          |
 * +---------------------------------------------------------------+    8
 * | magic "ENGNRING" (uint64)                                     |
 * +---------------------------------------------------------------+   16
 * | capacity (uint64): data bytes, a power of two                 |
 * +---------------------------------------------------------------+   24
 * | max_frame_length (uint64)                                     |
 * +---------------------------------------------------------------+   32
 * | base_offset (int64): offset of the ring's first record        |
 * +---------------------------------------------------------------+   40
 * | stall_timeout_ns (int64): torn-claim reaping deadline          |
 * +---------------------------------------------------------------+   48
 * | creator_pid (uint32)          | reserved                      |
 * +---------------------------------------------------------------+  128
 * | tail (uint64): the claim word, packed                          |
 * |   bits 0-31: (position / 8) mod 2^32                           |
 * |   bits 32-63: offset mod 2^32                                  |
 * +---------------------------------------------------------------+  256
 * | drain_position (uint64): broker has written up to here        |
 * +---------------------------------------------------------------+  264
 * | drain_offset (int64): first offset not yet in a segment       |
 * +---------------------------------------------------------------+  384
 * | publish_seq (uint32, futex)   | publish_waiters (uint32)      |
 * +---------------------------------------------------------------+  512
 * | space_seq (uint32, futex)     | space_waiters (uint32)        |
 * +---------------------------------------------------------------+  640
 * | leader_epoch (int32)          | sealed (uint32): 1 = refuse   |
 * +---------------------------------------------------------------+  648
 * | high_watermark (int64): -1 = the log end (no replication)     |
 * +---------------------------------------------------------------+  656
 * | isr_count (uint32): in-sync replicas, the leader included      |
 * +---------------------------------------------------------------+  768
 * | reaped_frames (uint64)                                        |
 * +---------------------------------------------------------------+  776
 * | full_waits (uint64): claims that found the ring full          |
 * +---------------------------------------------------------------+  784
 * | stall_position (uint64): a frame readers found stuck          |
 * +---------------------------------------------------------------+  792
 * | stall_since_ns (int64): when they first found it stuck        |
 * +---------------------------------------------------------------+  800
 * | full_seq (uint32, futex)      | full_waiters (uint32)         |
 * +---------------------------------------------------------------+  896
 * | hw_seq (uint32, futex)        | hw_waiters (uint32)           |
 * +---------------------------------------------------------------+ 1024
 * | producer fencing table: 64 slots of 16 bytes (below)          |
 * +---------------------------------------------------------------+ 2048
 * | read_offsets (uint64): offsets consumers read from the ring   |
 * +---------------------------------------------------------------+ 2056
 * | read_bytes (uint64): frame bytes consumers read (positions)   |
 * +---------------------------------------------------------------+ 2064
 * | reserved                                                      |
 * +---------------------------------------------------------------+ 4096
 *
 * read_offsets and read_bytes (in the reserved area of earlier rings, which
 * was zero) are the partition's "records and bytes out" for the metrics:
 * engine_ring_read and engine_ring_read_values add what each call delivered,
 * once per call, relaxed. A follower's copy (engine_ring_read_replica) is not
 * counted, as Kafka's BytesOut leaves out replication. A consumer that reads
 * the segment files adds what it read there (engine_ring_count_read).
 *
 * Producer fencing slot (transactional producers; version 2):
 * +---------------------------------------------------------------+  0
 * | key (uint64): producer_id + 1; 0 = free. Set once by CAS.      |
 * +---------------------------------------------------------------+  8
 * | epoch (int32): the producer's newest epoch | reserved (uint32)|
 * +---------------------------------------------------------------+ 16
 *
 * Fencing (Kafka's ProducerFenced): when a transactional id is initialised
 * again, its producer id gets a higher epoch and engine_ring_fence raises the
 * slot's epoch (an atomic max) on every partition the older instance may write.
 * An append whose batch carries a producer id checks the slot AFTER its claim
 * succeeded: a batch with an epoch below the slot's is turned into padding
 * (its offsets skipped) and the append answers PRODUCER_FENCED. Because the
 * fence is stored before the fencer claims its own frames (the abort markers),
 * a stale append either lands before those markers (and they decide it) or
 * sees the fence. Slots are never freed: a partition holds at most 64
 * transactional producer ids (RING_TABLE_FULL after that).
 *
 * Frame (every frame starts 8-byte aligned; stride = align8(frame_length)):
 *
 * +---------------------------------------------------------------+  0
 * | tag (uint64) = position | state                               |
 * |   the frame's own absolute position with its state in the low |
 * |   3 bits; a tag whose position is not the frame's own is stale |
 * |   data from an earlier lap                                     |
 * +---------------------------------------------------------------+  8
 * | frame_length (uint32): header + batch, bytes                  |
 * +---------------------------------------------------------------+ 12
 * | offset_count (uint32): records in the batch                   |
 * +---------------------------------------------------------------+ 16
 * | pid (uint32): the claiming process | reserved (uint32)        |
 * +---------------------------------------------------------------+ 24
 * | record batch (batch.h), frame_length - 24 bytes               |
 * +---------------------------------------------------------------+
 *
 * Positions only grow (bytes since the ring was created); an index is a
 * position masked into the data area.
 *
 * The publication protocol (producers):
 *  1. claim: read drain cursor and tail; compute the full position and offset
 *     of the tail; if the frame does not fit before the end of the data area,
 *     also claim the rest of the area as padding; if the claim would pass
 *     drain_position + capacity the ring is full: wait on space_seq. CAS the
 *     tail to (position + padding + stride, offset + records). Offsets are
 *     thereby dense and in position order.
 *  2. stamp: load the old tag; if it already carries our position, a reaper
 *     took the claim (see below): give up. Write length, count, pid, then CAS
 *     the tag from the old value to (position | CLAIMED).
 *  3. write the batch, base offset included, with its CRC.
 *  4. publish: CAS the tag (position | CLAIMED) -> (position | PUBLISHED),
 *     a release; then a full fence and, if readers wait, bump publish_seq
 *     and FUTEX_WAKE.
 *  Padding at the wrap is stamped (position | PAD_TO_END) and needs no length.
 *
 * Readers walk frames from a cursor (position, offset) and stop at the first
 * frame that is not PUBLISHED or padding. After copying frames out, they check
 * that the tail has not moved more than a capacity past the first copied frame
 * (a seqlock-style validation): otherwise the copy may be torn and the reader
 * must go to the segment files.
 *
 * Reaping (a producer died between claim and publish): a reader stalled at a
 * CLAIMED frame checks whether the claiming pid is alive; when it is not, it
 * CASes the tag to REAPING, then stores PADDING with the frame's length. A frame
 * whose tag was never stamped (the producer died between steps 1 and 2) is
 * reaped after stall_timeout_ns; its length is then found by looking for the
 * next frame's stamped tag (or the tail, confirmed unchanged 1 ms later). Known
 * limit: if the claimant after it also sits unstamped in that window (dead, or
 * stopped for over 1 ms between its claim and its stamp), both are padded over,
 * and a stopped one that then resumes publishes into padding. A reaped frame's
 * offsets are skipped,
 * the way Kafka skips offsets that compaction removed; its producer never got
 * an acknowledgement for it.
 *
 * All processes that share a ring must share a pid namespace.
 */
#ifndef ENGINE_RING_H
#define ENGINE_RING_H

#include <stddef.h>
#include <stdint.h>

#include "batch.h"

#define ENGINE_RING_VERSION 4u
#define ENGINE_RING_MAGIC 0x474E49524E474E45ull /* "ENGNRING" little-endian */
#define ENGINE_RING_HEADER_LENGTH 4096
#define ENGINE_RING_MIN_CAPACITY 65536ull
#define ENGINE_RING_MAX_CAPACITY (1ull << 34) /* tail packing covers 32 GiB */
#define ENGINE_FRAME_HEADER_LENGTH 24
#define ENGINE_FRAME_ALIGNMENT 8
#define ENGINE_RING_PRODUCER_SLOTS 64

enum engine_frame_state {
    ENGINE_FRAME_STALE = 0,      /* never a live state: zero low bits of old data */
    ENGINE_FRAME_CLAIMED = 1,    /* a producer is writing it */
    ENGINE_FRAME_PUBLISHED = 2,  /* readable */
    ENGINE_FRAME_PADDING = 3,    /* skip frame_length bytes */
    ENGINE_FRAME_PAD_TO_END = 4, /* skip to the end of the data area */
    ENGINE_FRAME_REAPING = 5,    /* a reaper is turning it into padding */
};

struct engine_ring_header {
    uint32_t version;
    uint32_t header_length;
    uint64_t magic;
    uint64_t capacity;
    uint64_t max_frame_length;
    int64_t base_offset;
    int64_t stall_timeout_ns;
    uint32_t creator_pid;
    uint32_t reserved0;
    uint8_t pad0[128 - 56];

    uint64_t tail;
    uint8_t pad1[128 - 8];

    uint64_t drain_position;
    int64_t drain_offset;
    uint8_t pad2[128 - 16];

    uint32_t publish_seq;
    uint32_t publish_waiters;
    uint8_t pad3[128 - 8];

    uint32_t space_seq;
    uint32_t space_waiters;
    uint8_t pad4[128 - 8];

    int32_t leader_epoch;
    uint32_t sealed;
    int64_t high_watermark;
    uint32_t isr_count;
    uint32_t reserved5;
    uint8_t pad5[128 - 24];

    uint64_t reaped_frames;
    uint64_t full_waits;
    uint64_t stall_position;
    int64_t stall_since_ns;
    uint32_t full_seq;
    uint32_t full_waiters;
    uint8_t pad6[128 - 40];

    uint32_t hw_seq;
    uint32_t hw_waiters;
    uint8_t pad6b[128 - 8];

    struct engine_producer_slot {
        uint64_t key;
        int32_t epoch;
        uint32_t reserved;
    } producers[ENGINE_RING_PRODUCER_SLOTS];

    uint64_t read_offsets;
    uint64_t read_bytes;
    uint8_t pad7[ENGINE_RING_HEADER_LENGTH - 2064];
};

_Static_assert(offsetof(struct engine_ring_header, version) == 0, "version");
_Static_assert(offsetof(struct engine_ring_header, header_length) == 4, "header_length");
_Static_assert(offsetof(struct engine_ring_header, magic) == 8, "magic");
_Static_assert(offsetof(struct engine_ring_header, capacity) == 16, "capacity");
_Static_assert(offsetof(struct engine_ring_header, max_frame_length) == 24, "max_frame_length");
_Static_assert(offsetof(struct engine_ring_header, base_offset) == 32, "base_offset");
_Static_assert(offsetof(struct engine_ring_header, stall_timeout_ns) == 40, "stall_timeout_ns");
_Static_assert(offsetof(struct engine_ring_header, creator_pid) == 48, "creator_pid");
_Static_assert(offsetof(struct engine_ring_header, tail) == 128, "tail");
_Static_assert(offsetof(struct engine_ring_header, drain_position) == 256, "drain_position");
_Static_assert(offsetof(struct engine_ring_header, drain_offset) == 264, "drain_offset");
_Static_assert(offsetof(struct engine_ring_header, publish_seq) == 384, "publish_seq");
_Static_assert(offsetof(struct engine_ring_header, publish_waiters) == 388, "publish_waiters");
_Static_assert(offsetof(struct engine_ring_header, space_seq) == 512, "space_seq");
_Static_assert(offsetof(struct engine_ring_header, space_waiters) == 516, "space_waiters");
_Static_assert(offsetof(struct engine_ring_header, leader_epoch) == 640, "leader_epoch");
_Static_assert(offsetof(struct engine_ring_header, sealed) == 644, "sealed");
_Static_assert(offsetof(struct engine_ring_header, high_watermark) == 648, "high_watermark");
_Static_assert(offsetof(struct engine_ring_header, isr_count) == 656, "isr_count");
_Static_assert(offsetof(struct engine_ring_header, reaped_frames) == 768, "reaped_frames");
_Static_assert(offsetof(struct engine_ring_header, full_waits) == 776, "full_waits");
_Static_assert(offsetof(struct engine_ring_header, stall_position) == 784, "stall_position");
_Static_assert(offsetof(struct engine_ring_header, stall_since_ns) == 792, "stall_since_ns");
_Static_assert(offsetof(struct engine_ring_header, full_seq) == 800, "full_seq");
_Static_assert(offsetof(struct engine_ring_header, full_waiters) == 804, "full_waiters");
_Static_assert(offsetof(struct engine_ring_header, hw_seq) == 896, "hw_seq");
_Static_assert(offsetof(struct engine_ring_header, hw_waiters) == 900, "hw_waiters");
_Static_assert(offsetof(struct engine_ring_header, producers) == 1024, "producers");
_Static_assert(sizeof(struct engine_producer_slot) == 16, "producer slot");
_Static_assert(offsetof(struct engine_ring_header, read_offsets) == 2048, "read_offsets");
_Static_assert(offsetof(struct engine_ring_header, read_bytes) == 2056, "read_bytes");
_Static_assert(sizeof(struct engine_ring_header) == ENGINE_RING_HEADER_LENGTH, "header size");

struct engine_frame_header {
    uint64_t tag;
    uint32_t frame_length;
    uint32_t offset_count;
    uint32_t pid;
    uint32_t reserved;
};

_Static_assert(offsetof(struct engine_frame_header, tag) == 0, "tag");
_Static_assert(offsetof(struct engine_frame_header, frame_length) == 8, "frame_length");
_Static_assert(offsetof(struct engine_frame_header, offset_count) == 12, "offset_count");
_Static_assert(offsetof(struct engine_frame_header, pid) == 16, "pid");
_Static_assert(sizeof(struct engine_frame_header) == ENGINE_FRAME_HEADER_LENGTH, "frame header");

/* Return codes of the ring operations. */
enum engine_ring_code {
    ENGINE_RING_OK = 0,
    ENGINE_RING_EMPTY = 1,        /* nothing published at the cursor yet */
    ENGINE_RING_TIMEOUT = 2,      /* a bounded wait ran out */
    ENGINE_RING_FULL = 3,         /* no space before the timeout: nothing written */
    ENGINE_RING_OVERWRITTEN = 4,  /* the cursor's data has been reused: read segments */
    ENGINE_RING_TOO_LARGE = 5,    /* the frame exceeds max_frame_length */
    ENGINE_RING_FENCED = 6,       /* a stale leader epoch */
    ENGINE_RING_SEALED = 7,       /* the ring refuses appends (not the leader any more) */
    ENGINE_RING_REAPED = 8,       /* our claim was reaped as torn: nothing published, retry */
    ENGINE_RING_BELOW = 9,        /* the offset is older than the ring holds */
    ENGINE_RING_BAD_ARGUMENT = 10,
    ENGINE_RING_OUT_TOO_SMALL = 11, /* the output buffer cannot hold the next batch */
    ENGINE_RING_CORRUPT = 12,     /* a header or frame failed its checks */
    ENGINE_RING_NOT_ENOUGH_REPLICAS = 13, /* isr_count < the producer's min_insync */
    ENGINE_RING_PRODUCER_FENCED = 14, /* a newer epoch of the producer id exists */
    ENGINE_RING_TABLE_FULL = 15,  /* the producer fencing table has no free slot */
    ENGINE_RING_VALUE_SIZE = 16,  /* read_values: a value of another size */
};

/* A reader's place in the ring: the next frame's position and the next
 * offset the reader expects. */
typedef struct engine_cursor {
    uint64_t position;
    int64_t offset;
} engine_cursor_t;

/* A snapshot for status and tests. */
typedef struct engine_ring_status {
    uint64_t capacity;
    uint64_t tail_position;
    int64_t tail_offset;        /* next offset to be claimed */
    uint64_t drain_position;
    int64_t drain_offset;
    int64_t base_offset;
    int32_t leader_epoch;
    uint32_t sealed;
    int64_t high_watermark;
    uint32_t isr_count;
    uint32_t reserved;
    uint64_t reaped_frames;
    uint64_t full_waits;
    uint32_t publish_waiters;
    uint32_t space_waiters;
    uint64_t read_offsets;      /* offsets consumers read from the ring (metrics) */
    uint64_t read_bytes;        /* frame bytes they read: positions passed */
} engine_ring_status_t;

/* Setup (not hot): format a zeroed region; check a mapped region. */
int engine_ring_init(void *region, uint64_t region_length, uint64_t capacity,
                     uint64_t max_frame_length, int64_t base_offset,
                     int64_t stall_timeout_ns, int32_t leader_epoch, uint32_t sealed);
int engine_ring_check(const void *region, uint64_t region_length);
uint64_t engine_ring_region_length(uint64_t capacity);

/* Append one record as a batch of one. key_length / value_length -1: null.
 * headers: Kafka-encoded headers (header_count of them). timeout_ns bounds the
 * wait for space. Returns the record's offset (>= 0), or minus a ring code. */
int64_t engine_ring_append(void *region, const engine_producer_fields_t *fields,
                       int64_t timestamp_ms,
                       const char *key, int32_t key_length,
                       const char *value, int32_t value_length,
                       const char *headers, int32_t headers_length, int32_t header_count,
                       int64_t timeout_ns);

/* The common case with fewer arguments (each costs time in a Python call): no
 * headers, and the wait for space is fields->timeout_ns. */
int64_t engine_ring_append_value(void *region, const engine_producer_fields_t *fields,
                                 int64_t timestamp_ms, const char *key, int32_t key_length,
                                 const char *value, int32_t value_length);

/* A producer's route to one topic, in the producer's own memory (not shared):
 * where engine_ring_send puts a record, Kafka's way. Keyed records go to
 * murmur2(key) % partition_count; keyless ones stick to sticky_partition until
 * batch_bytes of values went there, then move to another partition. */
typedef struct engine_route {
    const engine_producer_fields_t *fields;
    void *const *regions;         /* partition_count ring regions */
    int32_t partition_count;
    int32_t sticky_partition;
    int64_t sticky_bytes;
    int64_t batch_bytes;          /* Kafka's batch.size */
    int64_t max_record_bytes;     /* key + value larger than this: TOO_LARGE */
    uint64_t random_state;        /* picks the next sticky partition */
    int32_t last_partition;       /* out: the partition of the last send */
    int32_t reserved;
    int64_t last_timestamp_ms;    /* out: the timestamp it got (wall clock, ms) */
} engine_route_t;

/* Append one record, key and value only, to partition (-1: the one the route
 * picks), with the wall-clock time as its timestamp; never waits for space
 * (FULL instead, then the caller waits with engine_ring_append). Returns the
 * offset, or minus a ring code (BAD_ARGUMENT: no such partition);
 * route->last_partition and last_timestamp_ms say where and when. */
int64_t engine_ring_send(engine_route_t *route, int32_t partition, const char *key,
                         int32_t key_length, const char *value, int32_t value_length);

/* Where engine_ring_send would put a record, without appending it: its partition
 * (sticky state moved as a send moves it), or minus a ring code (TOO_LARGE,
 * BAD_ARGUMENT: no such partition); route->last_partition and last_timestamp_ms
 * (the wall clock, ms: the record's timestamp) are set. */
int32_t engine_route_pick(engine_route_t *route, int32_t partition, const char *key,
                          int32_t key_length, int32_t value_length);

/* Append one batch of count records already encoded (Kafka's record format, offset
 * deltas 0.., timestamp deltas from base_timestamp; a producer's accumulator made
 * them) behind a header written here (offsets from the claim, the producer fields,
 * the CRC). Waits up to timeout_ns for space. Returns its base offset, or minus a
 * ring code. */
int64_t engine_ring_append_encoded(void *region, const engine_producer_fields_t *fields,
                                   const uint8_t *records, uint64_t length, int32_t count,
                                   int64_t base_timestamp, int64_t max_timestamp,
                                   int64_t timeout_ns);

/* Append a Kafka client's batch (the listener's Produce) as it came, compressed or
 * not: the claim gives its base offset (last_offset_delta + 1 offsets) and the ring
 * its partition leader epoch, both written over the client's; the bytes the CRC
 * covers (from the attributes on) are not touched, so its CRC stays valid. The
 * caller has checked it (one whole magic-2 batch, its CRC). fields: the leader epoch
 * expected (-1: any) and min_insync, as for every append; the producer id and epoch
 * the fencing table judges are the batch's own. Waits up to timeout_ns for space.
 * Returns the base offset, or minus a ring code (BAD_ARGUMENT: length is not the
 * batch's own, or a negative last_offset_delta). */
int64_t engine_ring_append_client(void *region, const engine_producer_fields_t *fields,
                                  const uint8_t *batch, uint64_t length, int64_t timeout_ns);

/* Append count records in as few batches as max_frame_length allows.
 * values: value_lengths == NULL means every value is value_stride bytes,
 * back to back (a numpy array of fixed-size records); else values are packed
 * back to back with the given lengths. keys likewise; keys == NULL: null keys.
 * timestamps_ms may be NULL (then every record gets timestamp_ms). headers may
 * be NULL (no headers); else each record's Kafka-encoded headers, back to back,
 * header_lengths[r] bytes holding header_counts[r] of them.
 * *out_appended counts the records written (all of them unless an error
 * stopped the append part way: those already written stay written);
 * out_offsets (may be NULL) receives every record's offset: a batch split
 * over several frames may interleave with other producers' frames. */
int engine_ring_append_batch(void *region, const engine_producer_fields_t *fields,
                             int64_t timestamp_ms, const int64_t *timestamps_ms,
                             int32_t count,
                             const char *keys, const int32_t *key_lengths, int32_t key_stride,
                             const char *values, const int32_t *value_lengths,
                             int32_t value_stride,
                             const char *headers, const int32_t *header_lengths,
                             const int32_t *header_counts,
                             int64_t timeout_ns, int64_t *out_offsets,
                             int32_t *out_appended);

/* Append count fixed-size records to the route's partitions, each to the one
 * Kafka's partitioner gives its key (murmur2), in one batch per partition (more
 * when they exceed max_frame_length), encoded straight from keys and values:
 * no copy grouped by partition first. Waits up to timeout_ns for space, in
 * all (not per partition). scratch:
 * 2 * count + partition_count int32s. out_offsets (may be NULL): every record's
 * offset, in the caller's order. Per partition p: out_appended[p] records
 * appended (those of an error part way stay appended), out_codes[p] OK or the
 * error that stopped it, out_last_offsets[p] the offset of its last appended
 * record (only with out_offsets; else -1). Returns OK, or the last error. */
int engine_route_append_keyed(engine_route_t *route, int64_t timestamp_ms, int32_t count,
                              const char *keys, int32_t key_stride,
                              const char *values, int32_t value_stride,
                              int64_t timeout_ns, int32_t *scratch, int64_t *out_offsets,
                              int32_t *out_appended, int32_t *out_codes,
                              int64_t *out_last_offsets);

/* Copy whole published batches from the cursor into out (without frame
 * headers), stopping before a batch whose base offset is >= max_offset
 * (-1: the ring's high watermark, which is itself -1, no limit, without
 * replication), when out is full, or at the first unpublished frame.
 * Advances the cursor past what was copied. OK when something was copied. */
int engine_ring_read(void *region, engine_cursor_t *cursor, char *out,
                     uint64_t out_capacity, uint64_t *out_length, int64_t max_offset);
/* engine_ring_read for a follower copying its leader: not counted in read_offsets
 * and read_bytes. */
int engine_ring_read_replica(void *region, engine_cursor_t *cursor, char *out,
                             uint64_t out_capacity, uint64_t *out_length, int64_t max_offset);
/* Adds a read of the partition's segment files (offsets and bytes delivered) to
 * read_offsets and read_bytes. */
void engine_ring_count_read(void *region, int64_t offsets, uint64_t bytes);

/* The drain's read: the published batches at the cursor, in place, up to
 * max_offset (-1: the high watermark), max_bytes (at least one batch) and
 * max_batches, each checked (shape and CRC) and described in infos, positions
 * counting from the start of the data area (header excluded; a frame never wraps).
 * Moves the cursor past them. OK with *out_count batches, EMPTY, or CORRUPT (a
 * frame or batch that fails its checks is next). Only the owner of the drain
 * cursor may peek: the frames it is handed cannot be overwritten before it moves
 * the drain cursor past them (engine_ring_drain_to). */
int engine_ring_peek(void *region, engine_cursor_t *cursor, int64_t max_offset,
                     uint64_t max_bytes, engine_batch_info_t *infos, int32_t max_batches,
                     int32_t *out_count);

/* Consumers of fixed-size values: decode the published batches at the cursor
 * (stopping before a base offset >= max_offset, -1: the high watermark) in
 * place, copying the value of each record at or above *next_offset into out,
 * value_size bytes each, at most max_records; control batches give none. The
 * cursor moves past every batch delivered completely; *next_offset becomes the
 * offset after the last record delivered. One copy, from the ring to out, and
 * validated as engine_ring_read is: OVERWRITTEN means out holds nothing usable.
 * verify_crc 1: each batch's CRC32C is checked before its values are copied.
 * A batch that fails it, or whose offsets go back (its last offset below the
 * offset the reader stands at, or a later batch starting below the end of the
 * one before it), is CORRUPT and nothing of it is delivered. OK when the cursor
 * or *next_offset moved (*copied may be 0: markers only); else EMPTY,
 * OVERWRITTEN, CORRUPT, or VALUE_SIZE when the first record to deliver has a
 * value of another size (*bad_offset: its offset); records before a CORRUPT
 * batch or such a value are delivered first, with OK. */
int engine_ring_read_values(void *region, engine_cursor_t *cursor, int64_t max_offset,
                            int32_t value_size, char *out, int32_t max_records,
                            int32_t *copied, int64_t *next_offset, int64_t *bad_offset,
                            int verify_crc);

/* engine_ring_read_values over several rings in one call (a consumer's poll of
 * its partitions), ring first first and on around, each ring's values after
 * the previous ones' in out, until max_records are copied (the rest are not
 * looked at). Per ring i visited: codes[i] is read_values' code, or SEALED for
 * an EMPTY ring that is sealed (its leader moved); copied[i] and
 * next_offsets[i] as read_values'. touched[] gets, in the order visited, the
 * index of every ring whose code is not EMPTY; returns how many (0: nothing
 * was copied and every ring is EMPTY). */
int32_t engine_ring_read_values_many(void **regions, engine_cursor_t **cursors,
                                     int64_t *next_offsets, int32_t *codes, int32_t *copied,
                                     int32_t *touched, int32_t count, int32_t first,
                                     int32_t value_size, char *out, int32_t max_records,
                                     int verify_crc);

/* Wait until the frame at the cursor is readable or timeout_ns passes,
 * reaping torn claims on the way. timeout_ns 0: do not wait. respect_hw 1:
 * a frame at or above the high watermark is not readable yet (consumers);
 * 0: it is (a follower copying the leader). spin_ns: first look again and
 * again (a PAUSE between looks, sched_yield after the first microseconds) for
 * up to this long before sleeping on the futex: a busy stream then wakes
 * nobody (producers skip the FUTEX_WAKE when no one sleeps) and the reader
 * sees a frame within a microsecond or so, instead of after a wake-up the
 * scheduler may deliver late. 0: sleep at once. */
int engine_ring_wait(void *region, const engine_cursor_t *cursor, int64_t timeout_ns,
                     int respect_hw, int64_t spin_ns);

/* Which of several rings a read at its cursor has something for, without reading
 * or waiting (a consumer's poll skips the others): ready[i] = 1 when ring i has a
 * batch below its high watermark at the cursor, padding, a claim there that is not
 * published (a read decides whether it is stuck), a cursor lapped by the producers,
 * or a seal. Returns how many are ready. */
int32_t engine_ring_ready_many(void **regions, engine_cursor_t **cursors, int32_t count,
                               uint8_t *ready);

/* Wait until any of count rings (at most 128) is readable at its cursor; returns
 * its index, or minus a ring code (TIMEOUT). Spins as engine_ring_wait, then
 * sleeps with futex_waitv. */
int engine_ring_wait_any(void **regions, const engine_cursor_t *cursors, int32_t count,
                         int64_t timeout_ns, int respect_hw, int64_t spin_ns);

/* A consumer's poll of fixed-size values: engine_ring_read_values_many, and
 * when every ring was EMPTY, engine_ring_wait_any (respecting the high
 * watermark; at most 128 rings) for up to timeout_ns, then read them all
 * again, whatever ended the wait (data, a wake, the timeout). Returns as
 * read_values_many. The wait spins *spin_ns first (at most max_spin_ns) and
 * sets *spin_ns for the next poll: max_spin_ns when the wait ended within
 * max_spin_ns, else half the spin it made (a spin that keeps missing decays to
 * none; the first wait that ends within max_spin_ns restores it). */
int32_t engine_ring_poll_values(void **regions, engine_cursor_t **cursors,
                                int64_t *next_offsets, int32_t *codes, int32_t *copied,
                                int32_t *touched, int32_t count, int32_t first,
                                int32_t value_size, char *out, int32_t max_records,
                                int64_t timeout_ns, int64_t max_spin_ns, int64_t *spin_ns,
                                int verify_crc);

/* Place a cursor at the frame holding offset, searching from the drain
 * cursor: BELOW when the offset is older than the drain cursor. */
int engine_ring_seek(void *region, int64_t offset, engine_cursor_t *cursor);

/* Broker: move the drain cursor (everything before it is in a segment). */
int engine_ring_drain_to(void *region, uint64_t position, int64_t offset);
/* Broker: read the drain cursor. */
void engine_ring_drain_cursor(void *region, engine_cursor_t *cursor);

/* Control (replication, failover): set the leader epoch and seal flag. */
void engine_ring_set_leader(void *region, int32_t leader_epoch, uint32_t sealed);
/* Readers: 1 if the ring is sealed (its leader moved: look up the new one). */
uint32_t engine_ring_sealed(void *region);
void engine_ring_set_high_watermark(void *region, int64_t high_watermark);
void engine_ring_set_isr_count(void *region, uint32_t isr_count);
/* Transactions: raise producer_id's epoch in the fencing table to at least
 * epoch (OK, or TABLE_FULL); read it back (-1: producer_id has no slot). */
int engine_ring_fence(void *region, int64_t producer_id, int32_t epoch);
int32_t engine_ring_producer_epoch(void *region, int64_t producer_id);
/* Wake every process waiting on the ring (a stopping replica's own threads). */
void engine_ring_wake(void *region);
/* The drain's sleep between passes: until timeout_ns passes (TIMEOUT) or a
 * producer finds the ring full, full_waits no longer being full_waits_seen (OK;
 * also OK when engine_ring_wake ends the wait). */
int engine_ring_wait_full(void *region, uint64_t full_waits_seen, int64_t timeout_ns);

/* Replication. A follower appends the leader's batches as they are (their offsets
 * kept; an offset gap becomes an offset-consuming padding frame). It ignores the
 * seal, which keeps producers off a follower's ring. */
int engine_ring_append_raw(void *region, const char *batches, uint64_t length,
                           int64_t timeout_ns);
/* Move the cursor over every published frame without copying (the leader's
 * published log end is then cursor->offset). */
void engine_ring_advance(void *region, engine_cursor_t *cursor);
/* Wait until the high watermark passes offset (acks="all"): OK, TIMEOUT, or
 * SEALED when the ring stopped being the leader's. A ring without replication
 * (high watermark -1) answers OK at once. */
int engine_ring_wait_high_watermark(void *region, int64_t offset, int64_t timeout_ns);

/* replicate.c: the replication loops, each running until Python has something to
 * decide (see there). stop: the caller sets *stop, then wakes the rings waited on.
 *
 * A follower's fetch: copies the leader's frames at cursor into follower, through
 * buf. Returns TIMEOUT (timeout_ns passed, or *stop), SEALED (the leader's ring
 * was sealed: look the leader up again), OVERWRITTEN (the cursor was lapped: seek
 * again, or read the leader's segments), OUT_TOO_SMALL (*needed_length: a bigger
 * buf), CORRUPT, or the code of a failed append into follower (FULL after
 * append_timeout_ns; the cursor is then past what the follower holds: seek again
 * from the follower's log end). */
int engine_replica_follow(void *leader, engine_cursor_t *cursor, void *follower, char *buf,
                          uint64_t buf_length, int64_t timeout_ns, int64_t pause_ns,
                          int64_t append_timeout_ns, const volatile uint32_t *stop,
                          uint64_t *needed_length);

#define ENGINE_REPLICA_MAX_FOLLOWERS 127
/* A leader's high watermark: keeps it at the least log end offset of the leader
 * (published->offset, moved forward here) and of the followers with in_isr[i] == 1
 * (0: outside the ISR; 2: outside, and not to be reported as caught up). A
 * follower i whose followers[i] is NULL (not open) counts with the ends[i] given;
 * otherwise ends[i] is set to its ring's tail offset, -1 when that ring is not a
 * follower ring of leader_epoch. caught_up_ns[i] is set to the time (CLOCK_MONOTONIC)
 * of each pass at which follower i held what the leader held one pass before.
 * Passes happen when an in-sync follower at the high watermark or a follower
 * outside the ISR appends (the leader's own appends cannot raise it; the leader
 * is waited on only when no follower ring is there), and at each call: Python
 * calls again at least every LAG_CHECK_S while a follower lags.
 * Returns OK when a follower with in_isr[i] == 0 caught up (Python adds it), TIMEOUT
 * when timeout_ns passed or *stop, BAD_ARGUMENT for count out of range. */
int engine_replica_track(void *leader, engine_cursor_t *published, void **followers,
                         int32_t count, const uint8_t *in_isr, int32_t leader_epoch,
                         int64_t *ends, int64_t *caught_up_ns, int64_t timeout_ns,
                         int64_t pause_ns, const volatile uint32_t *stop);

void engine_ring_status(void *region, engine_ring_status_t *out);

/* Tests only: claim a frame and leave it unpublished, as a producer killed
 * between claim and publish would. stamp 0: die before stamping the tag too.
 * Returns the claimed position, or minus a ring code. */
int64_t engine_ring_claim_for_test(void *region, uint32_t frame_length, int stamp);

/* CRC32C (Castagnoli), hardware-accelerated where the CPU has it. */
uint32_t engine_crc32c(uint32_t crc, const void *data, size_t length);

/* Kafka's murmur2 partitioner hash (as org.apache.kafka.common.utils.Utils). */
int32_t engine_murmur2(const void *data, int32_t length);

/* Kafka's partition of each of count keys (see hash.c). */
void engine_partition_many(const char *keys, const int32_t *key_lengths, int32_t key_stride,
                           int32_t count, int32_t partitions, int32_t *out);
/* A stable counting sort of record numbers by partition: out_order lists the
 * records of partition 0, then 1, ...; out_ends[p] is where partition p's records end. */
void engine_order_by_partition(const int32_t *parts, int32_t count, int32_t partitions,
                               int32_t *out_order, int32_t *out_ends);
void engine_scatter_by_partition(const char *values, int32_t value_stride, const char *keys,
                                 int32_t key_stride, const int32_t *parts, int32_t count,
                                 int32_t partitions, char *out_values, char *out_keys,
                                 int32_t *out_counts, int32_t *out_index);

#endif
