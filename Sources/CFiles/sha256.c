/* SHA-256: see include/sha256.h. The portable compression function follows FIPS 180-4 §6.2.2 word
 * for word; the SHA-NI one runs the same rounds four at a time (sha256rnds2 twice per group of four
 * message words, the schedule by sha256msg1/msg2). */
#include "sha256.h"
#include <string.h>

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void blocks_portable(uint32_t state[8], const unsigned char *p, size_t blocks) {
    uint32_t w[64];
    while (blocks--) {
        for (int t = 0; t < 16; t++)
            w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 | (uint32_t)p[4 * t + 2] << 8 | p[4 * t + 3];
        for (int t = 16; t < 64; t++) {
            uint32_t s0 = rotr(w[t - 15], 7) ^ rotr(w[t - 15], 18) ^ (w[t - 15] >> 3);
            uint32_t s1 = rotr(w[t - 2], 17) ^ rotr(w[t - 2], 19) ^ (w[t - 2] >> 10);
            w[t] = w[t - 16] + s0 + w[t - 7] + s1;
        }
        uint32_t a = state[0], b = state[1], c = state[2], d = state[3], e = state[4], f = state[5], g = state[6], h = state[7];
        for (int t = 0; t < 64; t++) {
            uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[t] + w[t];
            uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        state[0] += a; state[1] += b; state[2] += c; state[3] += d;
        state[4] += e; state[5] += f; state[6] += g; state[7] += h;
        p += 64;
    }
}

#if defined(__x86_64__) && defined(__clang__)
#include <immintrin.h>

__attribute__((target("sha,sse4.1,ssse3")))
static void blocks_shani(uint32_t state[8], const unsigned char *p, size_t blocks) {
    const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[0]), 0xB1); /* CDAB */
    __m128i s1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[4]), 0x1B); /* EFGH */
    __m128i s0 = _mm_alignr_epi8(tmp, s1, 8);                                          /* ABEF */
    s1 = _mm_blend_epi16(s1, tmp, 0xF0);                                               /* CDGH */
    while (blocks--) {
        const __m128i abef = s0, cdgh = s1;
        __m128i m0, m1, m2, m3, msg;
        /* Fully unrolled: the message schedule stays in registers (an indexed array spills). */
#define ROUNDS(g, w) \
        msg = _mm_add_epi32(w, _mm_loadu_si128((const __m128i *)&K[4 * (g)])); \
        s1 = _mm_sha256rnds2_epu32(s1, s0, msg); \
        s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(msg, 0x0E));
#define SCHEDULE(a, b, c, d) \
        a = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(a, b), _mm_alignr_epi8(d, c, 4)), d);
        m0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), swap);  ROUNDS(0, m0)
        m1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), swap); ROUNDS(1, m1)
        m2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), swap); ROUNDS(2, m2)
        m3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), swap); ROUNDS(3, m3)
        SCHEDULE(m0, m1, m2, m3) ROUNDS(4, m0)
        SCHEDULE(m1, m2, m3, m0) ROUNDS(5, m1)
        SCHEDULE(m2, m3, m0, m1) ROUNDS(6, m2)
        SCHEDULE(m3, m0, m1, m2) ROUNDS(7, m3)
        SCHEDULE(m0, m1, m2, m3) ROUNDS(8, m0)
        SCHEDULE(m1, m2, m3, m0) ROUNDS(9, m1)
        SCHEDULE(m2, m3, m0, m1) ROUNDS(10, m2)
        SCHEDULE(m3, m0, m1, m2) ROUNDS(11, m3)
        SCHEDULE(m0, m1, m2, m3) ROUNDS(12, m0)
        SCHEDULE(m1, m2, m3, m0) ROUNDS(13, m1)
        SCHEDULE(m2, m3, m0, m1) ROUNDS(14, m2)
        SCHEDULE(m3, m0, m1, m2) ROUNDS(15, m3)
#undef SCHEDULE
#undef ROUNDS
        s0 = _mm_add_epi32(s0, abef);
        s1 = _mm_add_epi32(s1, cdgh);
        p += 64;
    }
    tmp = _mm_shuffle_epi32(s0, 0x1B);    /* FEBA */
    s1 = _mm_shuffle_epi32(s1, 0xB1);     /* DCHG */
    s0 = _mm_blend_epi16(tmp, s1, 0xF0);  /* DCBA */
    s1 = _mm_alignr_epi8(s1, tmp, 8);     /* HGFE */
    _mm_storeu_si128((__m128i *)&state[0], s0);
    _mm_storeu_si128((__m128i *)&state[4], s1);
}

int lora_sha256_hardware(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1");
}
#else
static void blocks_shani(uint32_t state[8], const unsigned char *p, size_t blocks) { blocks_portable(state, p, blocks); }
int lora_sha256_hardware(void) { return 0; }
#endif

static void blocks(struct lora_sha256 *h, const unsigned char *p, size_t n) {
    if (h->accelerated) blocks_shani(h->state, p, n);
    else blocks_portable(h->state, p, n);
}

void lora_sha256_init(struct lora_sha256 *h, int accelerated) {
    static const uint32_t initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(h->state, initial, sizeof initial);
    h->length = 0;
    h->used = 0;
    h->accelerated = accelerated && lora_sha256_hardware();
}

void lora_sha256_update(struct lora_sha256 *h, const void *data, size_t count) {
    const unsigned char *p = data;
    h->length += count;
    if (h->used) {
        size_t take = 64 - h->used < count ? 64 - h->used : count;
        memcpy(h->block + h->used, p, take);
        h->used += take;
        p += take;
        count -= take;
        if (h->used < 64) return;
        blocks(h, h->block, 1);
        h->used = 0;
    }
    if (count >= 64) {
        blocks(h, p, count / 64);
        p += count / 64 * 64;
        count %= 64;
    }
    memcpy(h->block, p, count);
    h->used = count;
}

void lora_sha256_final(struct lora_sha256 *h, unsigned char digest[32]) {
    uint64_t bits = h->length * 8;
    unsigned char pad[72] = {0x80};
    size_t n = (h->used < 56 ? 56 : 120) - h->used;
    for (int i = 0; i < 8; i++) pad[n + i] = (unsigned char)(bits >> (56 - 8 * i));
    uint64_t length = h->length;
    lora_sha256_update(h, pad, n + 8);
    h->length = length;
    for (int i = 0; i < 8; i++) {
        digest[4 * i] = (unsigned char)(h->state[i] >> 24);
        digest[4 * i + 1] = (unsigned char)(h->state[i] >> 16);
        digest[4 * i + 2] = (unsigned char)(h->state[i] >> 8);
        digest[4 * i + 3] = (unsigned char)h->state[i];
    }
}
