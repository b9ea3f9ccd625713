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
__attribute__((target("sse4.2")))
static uint32_t crc32c_hardware(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = __builtin_ia32_crc32di(c, w);
        p += 8;
        n -= 8;
    }
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
