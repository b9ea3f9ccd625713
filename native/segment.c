/*
 * segment.c - the append plan of a log segment (rules and entry layouts in
 * segment.h). Pure arithmetic over scanned batch infos: no I/O, no state kept.
 */
#include <errno.h>
#include <sys/uio.h>

#include "segment.h"

int engine_batch_check_order(const engine_batch_info_t *infos, int32_t count,
                             int64_t next_offset, engine_batch_order_t *order) {
    order->bad_batch = -1;
    order->largest_length = 0;
    order->records = 0;
    int code = ENGINE_ORDER_OK;
    int64_t previous_last = next_offset - 1;
    for (int32_t i = 0; i < count; i++) {
        const engine_batch_info_t *b = &infos[i];
        if (code == ENGINE_ORDER_OK) {
            if (b->base_offset <= previous_last)
                code = i == 0 ? ENGINE_ORDER_BELOW_START : ENGINE_ORDER_NOT_INCREASING;
            else if (b->last_offset - b->base_offset > ENGINE_SEGMENT_MAX_RELATIVE_OFFSET)
                code = ENGINE_ORDER_TOO_WIDE;
            if (code != ENGINE_ORDER_OK) order->bad_batch = i;
        }
        previous_last = b->last_offset;
        if (b->length > order->largest_length) order->largest_length = b->length;
        order->records += b->records_count;
    }
    return code;
}

/* Is a batch with max_timestamp ts more than segment_ms after rolling? INT64_MAX
 * means never (overflow-safe for any timestamps a batch may carry). */
static inline int too_late(int64_t ts, int64_t rolling, int64_t segment_ms) {
    int64_t age;
    if (segment_ms == INT64_MAX) return 0;
    if (__builtin_sub_overflow(ts, rolling, &age)) return ts > rolling;
    return age > segment_ms;
}

/* Does the batch starting at position get an index entry, after a batch at
 * previous (-1: none)? */
static inline int indexed(int64_t position, int64_t previous, int64_t interval) {
    if (interval <= 0 || previous < 0) return 1;
    return position / interval != previous / interval;
}

int32_t engine_segment_plan(const engine_batch_info_t *infos, int32_t count,
                            const engine_segment_limits_t *limits,
                            engine_segment_state_t *state,
                            uint8_t *offset_entries, uint8_t *time_entries,
                            int32_t max_entries, int32_t *offset_count, int32_t *time_count) {
    *offset_count = 0;
    *time_count = 0;
    if (count < 1 || max_entries < 1) return 0;
    int64_t first_size = state->size;
    int64_t rolling = first_size ? state->rolling_timestamp : infos[0].max_timestamp;
    int64_t room = state->index_room < max_entries ? state->index_room : max_entries;
    int32_t placed = 0;
    for (int32_t i = 0; i < count; i++) {
        const engine_batch_info_t *b = &infos[i];
        int64_t position = state->size; /* batches go back to back, wherever they lie */
        int need = indexed(position, state->last_batch_position, limits->index_interval_bytes);
        int fits = position + b->length <= limits->segment_bytes &&
                   b->last_offset - state->base_offset <= ENGINE_SEGMENT_MAX_RELATIVE_OFFSET &&
                   *offset_count + need <= room &&
                   !too_late(b->max_timestamp, rolling, limits->segment_ms);
        if (!fits) {
            /* An empty segment takes one batch whatever the limits (but never
             * one whose offsets it cannot hold: the log rolls to its base). */
            int forced = i == 0 && first_size == 0 &&
                         b->last_offset - state->base_offset <= ENGINE_SEGMENT_MAX_RELATIVE_OFFSET;
            if (!forced) break;
            need = need && *offset_count < max_entries;
        }
        int64_t running = b->max_timestamp > state->max_timestamp ? b->max_timestamp
                                                                  : state->max_timestamp;
        if (need) {
            uint32_t relative = (uint32_t)(b->base_offset - state->base_offset);
            uint8_t *o = offset_entries + (int64_t)*offset_count * ENGINE_OFFSET_INDEX_ENTRY_LENGTH;
            put_be32(o, relative);
            put_be32(o + 4, (uint32_t)position);
            (*offset_count)++;
            if (running > state->time_index_last) {
                uint8_t *t = time_entries + (int64_t)*time_count * ENGINE_TIME_INDEX_ENTRY_LENGTH;
                put_be64(t, (uint64_t)running);
                put_be32(t + 8, relative);
                (*time_count)++;
                state->time_index_last = running;
            }
        }
        if (state->size == 0) state->rolling_timestamp = b->max_timestamp;
        state->size = position + b->length;
        state->next_offset = b->last_offset + 1;
        state->max_timestamp = running;
        state->last_batch_position = position;
        state->last_batch_base_offset = b->base_offset;
        placed = i + 1;
        if (!fits) break; /* the one forced batch */
    }
    state->index_room -= *offset_count;
    return placed;
}

/* iovecs per pwritev: well below IOV_MAX (1024 on Linux). */
#define WRITE_IOVECS 256

int engine_batches_write(int fd, const uint8_t *base, const engine_batch_info_t *infos,
                         int32_t count, int64_t file_offset) {
    struct iovec iov[WRITE_IOVECS];
    int32_t i = 0;
    uint64_t skip = 0; /* bytes of infos[i] written already */
    while (i < count) {
        int k = 0;
        for (int32_t j = i; j < count && k < WRITE_IOVECS; j++, k++) {
            uint64_t from = j == i ? skip : 0;
            iov[k].iov_base = (void *)(base + infos[j].position + from);
            iov[k].iov_len = (size_t)infos[j].length - from;
        }
        ssize_t written = pwritev(fd, iov, k, (off_t)file_offset);
        if (written < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (written == 0) return -EIO;
        file_offset += written;
        uint64_t w = (uint64_t)written;
        while (w) {
            uint64_t left = (uint64_t)infos[i].length - skip;
            if (w >= left) {
                w -= left;
                i++;
                skip = 0;
            } else {
                skip += w;
                w = 0;
            }
        }
    }
    return 0;
}
