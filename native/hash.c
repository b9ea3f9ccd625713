/*
 * hash.c - CRC32C for batches and Kafka's murmur2 for the partitioner.
 */
#include <stdint.h>
#include <string.h>

#include "ring.h"

/* Software CRC32C, one byte at a time over a 256-entry table. */
static uint32_t crc32c_table[256];
static int crc32c_table_ready = 0;

static void crc32c_table_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc32c_table[i] = c;
    }
    __atomic_store_n(&crc32c_table_ready, 1, __ATOMIC_RELEASE);
}

static uint32_t crc32c_software(uint32_t crc, const uint8_t *p, size_t n) {
    if (!__atomic_load_n(&crc32c_table_ready, __ATOMIC_ACQUIRE)) crc32c_table_init();
    while (n--) crc = crc32c_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
/* The crc32 instruction has a latency of 3 cycles and a throughput of 1, so
 * three independent streams run three times as fast as one. CRC is linear
 * in its state: crc(s, A||B) = shift_|B|(crc(s, A)) ^ crc(0, B), where shift_n
 * multiplies the state by x^(8n) mod P. We cut the data into three blocks of
 * CRC_BLOCK bytes, run them side by side, and join them with a precomputed
 * shift_CRC_BLOCK (a 32x32 bit matrix, one column per state bit). */
#define CRC_BLOCK 4096
static uint32_t crc_shift_block[32];
static int crc_shift_ready = 0;

__attribute__((target("sse4.2")))
static uint64_t crc_run(uint64_t c, const uint8_t *p, size_t n) {
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
    }
    return c;
}

__attribute__((target("sse4.2")))
static void crc_shift_init(void) {
    static const uint8_t zeros[CRC_BLOCK];
    for (int i = 0; i < 32; i++) crc_shift_block[i] = (uint32_t)crc_run(1u << i, zeros, CRC_BLOCK);
    __atomic_store_n(&crc_shift_ready, 1, __ATOMIC_RELEASE);
}

static inline uint32_t crc_shift(uint32_t state) {
    uint32_t r = 0;
    for (int i = 0; state; i++, state >>= 1)
        if (state & 1) r ^= crc_shift_block[i];
    return r;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hardware(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = crc;
    if (n >= 3 * CRC_BLOCK) {
        if (!__atomic_load_n(&crc_shift_ready, __ATOMIC_ACQUIRE)) crc_shift_init();
        while (n >= 3 * CRC_BLOCK) {
            uint64_t c1 = 0, c2 = 0;
            const uint8_t *p1 = p + CRC_BLOCK, *p2 = p + 2 * CRC_BLOCK;
            for (size_t k = 0; k < CRC_BLOCK; k += 8) {
                uint64_t w0, w1, w2;
                memcpy(&w0, p + k, 8);
                memcpy(&w1, p1 + k, 8);
                memcpy(&w2, p2 + k, 8);
                c = __builtin_ia32_crc32di(c, w0);
                c1 = __builtin_ia32_crc32di(c1, w1);
                c2 = __builtin_ia32_crc32di(c2, w2);
            }
            c = crc_shift(crc_shift((uint32_t)c) ^ (uint32_t)c1) ^ (uint32_t)c2;
            p += 3 * CRC_BLOCK;
            n -= 3 * CRC_BLOCK;
        }
    }
    c = crc_run(c, p, n & ~(size_t)7);
    p += n & ~(size_t)7;
    n &= 7;
    uint32_t c32 = (uint32_t)c;
    while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}
static int has_hardware_crc(void) {
    static int cached = -1;
    if (cached < 0) cached = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    return cached;
}
#endif

uint32_t engine_crc32c(uint32_t crc, const void *data, size_t length) {
    crc = ~crc;
#if defined(__x86_64__)
    if (has_hardware_crc()) return ~crc32c_hardware(crc, data, length);
#endif
    return ~crc32c_software(crc, data, length);
}

/* murmur2 exactly as Kafka's Utils.murmur2 (seed 0x9747b28c, Java int math). */
int32_t engine_murmur2(const void *data, int32_t length) {
    const uint8_t *d = data;
    const uint32_t seed = 0x9747b28cu;
    const uint32_t m = 0x5bd1e995u;
    const int r = 24;
    uint32_t h = seed ^ (uint32_t)length;
    int32_t length4 = length / 4;
    for (int32_t i = 0; i < length4; i++) {
        int32_t i4 = i * 4;
        uint32_t k = (uint32_t)d[i4] | ((uint32_t)d[i4 + 1] << 8) |
                     ((uint32_t)d[i4 + 2] << 16) | ((uint32_t)d[i4 + 3] << 24);
        k *= m;
        k ^= k >> r;
        k *= m;
        h *= m;
        h ^= k;
    }
    int32_t tail = length & ~3;
    switch (length % 4) {
    case 3: h ^= (uint32_t)d[tail + 2] << 16; /* fall through */
    case 2: h ^= (uint32_t)d[tail + 1] << 8;  /* fall through */
    case 1: h ^= (uint32_t)d[tail]; h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return (int32_t)h;
}

/* Kafka's partition for each of count keys: (murmur2(key) & 0x7fffffff) % partitions.
 * keys are back to back, with key_lengths[i] bytes each, or key_stride bytes each
 * when key_lengths is NULL. */
void engine_partition_many(const char *keys, const int32_t *key_lengths, int32_t key_stride,
                           int32_t count, int32_t partitions, int32_t *out) {
    const char *k = keys;
    for (int32_t i = 0; i < count; i++) {
        int32_t length = key_lengths ? key_lengths[i] : key_stride;
        out[i] = (engine_murmur2(k, length) & 0x7FFFFFFF) % partitions;
        k += length;
    }
}

/* Groups count fixed-size records by partition (a stable counting sort): record i
 * of partition p goes to out_values / out_keys after every earlier record of p,
 * and partitions follow each other in order. out_counts[p] receives how many. */
void engine_order_by_partition(const int32_t *parts, int32_t count, int32_t partitions,
                               int32_t *out_order, int32_t *out_ends) {
    for (int32_t p = 0; p < partitions; p++) out_ends[p] = 0;
    for (int32_t i = 0; i < count; i++) out_ends[parts[i]]++;
    int32_t start = 0;
    for (int32_t p = 0; p < partitions; p++) {
        int32_t n = out_ends[p];
        out_ends[p] = start; /* running position while filling */
        start += n;
    }
    for (int32_t i = 0; i < count; i++) out_order[out_ends[parts[i]]++] = i;
}

void engine_scatter_by_partition(const char *values, int32_t value_stride, const char *keys,
                                 int32_t key_stride, const int32_t *parts, int32_t count,
                                 int32_t partitions, char *out_values, char *out_keys,
                                 int32_t *out_counts, int32_t *out_index) {
    engine_order_by_partition(parts, count, partitions, out_index, out_counts);
    for (int32_t at = 0; at < count; at++) {
        int32_t i = out_index[at];
        memcpy(out_values + (size_t)at * (size_t)value_stride,
               values + (size_t)i * (size_t)value_stride, (size_t)value_stride);
        if (keys)
            memcpy(out_keys + (size_t)at * (size_t)key_stride,
                   keys + (size_t)i * (size_t)key_stride, (size_t)key_stride);
    }
    /* out_counts now holds each partition's end; turn it back into counts */
    for (int32_t p = partitions - 1; p > 0; p--) out_counts[p] -= out_counts[p - 1];
}
