/* CRC-32 of the zip/gzip polynomial (0x04C11DB7, reflected 0xEDB88320; the value zlib.crc32 gives),
 * for the zip CRC check of every torch-file member whose bytes feed a statistic (integrity.py).
 *
 * Why: zlib's CRC-32 runs at ~1.3 GB/s on the test machine; `inspect` of a 3.3 GB DeepSpeed ZeRO-3
 * checkpoint (every byte is a zip member feeding a statistic) spent more time in it than in reading
 * and the statistics together. Here, on x86-64 CPUs with PCLMULQDQ (chosen at run time), the CRC is
 * computed by carry-less multiplication folding (Gopal et al., "Fast CRC Computation for Generic
 * Polynomials Using PCLMULQDQ Instruction", Intel 2009): four 128-bit lanes folded 64 bytes at a
 * time, then a Barrett reduction to 32 bits; elsewhere by slicing-by-8 tables in portable C.
 * Loaded with ctypes (crc_kernel.py; no Python C API). Optional: without it integrity.py uses
 * zlib.crc32, the reference the tests compare both paths against.
 *
 * Semantics are zlib's crc32(crc, buf, len): `crc` is a previous result (0 to start) and the result
 * continues it, so a member can be checked window by window. adamdiag_crc32_copy also copies the bytes
 * it reads (a DeepSpeed reader gathering a tensor from its ranks' flat partitions): the CRC costs no
 * second pass over memory.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define POLY 0xEDB88320u

/* Slicing-by-8 tables: t[0] is the byte-at-a-time table, t[k][b] the CRC of byte b followed by k zero
 * bytes. Built once by adamdiag_crc_init (the loader calls it before any CRC, under its lock). */
static uint32_t crc_table[8][256];
static int table_ready = 0;

static void build_tables(void) {
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (POLY & (0u - (c & 1u)));
        crc_table[0][b] = c;
    }
    for (int b = 0; b < 256; b++)
        for (int k = 1; k < 8; k++) crc_table[k][b] = (crc_table[k - 1][b] >> 8) ^ crc_table[0][crc_table[k - 1][b] & 0xff];
    table_ready = 1;
}

/* The portable path on the inverted register c (no pre/post inversion here). Words are put together
 * from bytes, so the result does not depend on the CPU's byte order (compilers turn it into one load
 * on little-endian machines). */
static uint32_t crc_tables(uint32_t c, const unsigned char *p, size_t n) {
    while (n && ((uintptr_t)p & 7)) {
        c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
        n--;
    }
    while (n >= 8) {
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 | (uint32_t)p[7] << 24;
        c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^ crc_table[5][(lo >> 16) & 0xff] ^
            crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
            crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
    return c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(ADAMDIAG_PLAIN_ONLY)
#include <immintrin.h>
#define HAVE_CLMUL_PATH 1

/* Every 16 bytes the fold loads, also stored to dst when there is one (the copy). */
#define LOAD(q, i) load_keep((const __m128i *)((q) + (i)), dst ? (__m128i *)(dst + ((q) - p0) + (i)) : 0)
__attribute__((target("pclmul,sse4.1"), always_inline)) static inline __m128i load_keep(const __m128i *src,
                                                                                      __m128i *dst) {
    __m128i x = _mm_loadu_si128(src);
    if (dst) _mm_storeu_si128(dst, x);
    return x;
}

/* n >= 64, n % 16 == 0; c is the inverted register; dst (or NULL) receives a copy of the n bytes.
 * Constants: the bit-reflected x^k mod P of the paper (k1/k2 fold 512 bits, k3/k4 fold 128, k5 folds
 * 64 to 32) and P with its Barrett quotient μ. */
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc_clmul(uint32_t c, const unsigned char *p, size_t n,
                                                                   unsigned char *dst) {
    const unsigned char *p0 = p;
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL);
    const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124LL);
    const __m128i poly = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL);
    const __m128i low32 = _mm_setr_epi32(~0, 0, ~0, 0);
    __m128i x1 = LOAD(p, 0x00), x2 = LOAD(p, 0x10), x3 = LOAD(p, 0x20), x4 = LOAD(p, 0x30);
    __m128i t1, t2, t3, t4;
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)c));
    p += 64;
    n -= 64;
    while (n >= 64) { /* four independent lanes: the multiplier's latency is hidden */
        t1 = _mm_clmulepi64_si128(x1, k1k2, 0x00);
        t2 = _mm_clmulepi64_si128(x2, k1k2, 0x00);
        t3 = _mm_clmulepi64_si128(x3, k1k2, 0x00);
        t4 = _mm_clmulepi64_si128(x4, k1k2, 0x00);
        x1 = _mm_clmulepi64_si128(x1, k1k2, 0x11);
        x2 = _mm_clmulepi64_si128(x2, k1k2, 0x11);
        x3 = _mm_clmulepi64_si128(x3, k1k2, 0x11);
        x4 = _mm_clmulepi64_si128(x4, k1k2, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, t1), LOAD(p, 0x00));
        x2 = _mm_xor_si128(_mm_xor_si128(x2, t2), LOAD(p, 0x10));
        x3 = _mm_xor_si128(_mm_xor_si128(x3, t3), LOAD(p, 0x20));
        x4 = _mm_xor_si128(_mm_xor_si128(x4, t4), LOAD(p, 0x30));
        p += 64;
        n -= 64;
    }
    /* the four lanes into one */
    t1 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), x2), t1);
    t1 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), x3), t1);
    t1 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), x4), t1);
    while (n >= 16) {
        t1 = _mm_clmulepi64_si128(x1, k3k4, 0x00);
        x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x11), LOAD(p, 0)), t1);
        p += 16;
        n -= 16;
    }
    /* 128 -> 64 bits */
    t2 = _mm_clmulepi64_si128(x1, k3k4, 0x10);
    x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), t2);
    /* 64 -> 32 bits */
    t2 = _mm_srli_si128(x1, 4);
    x1 = _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x1, low32), k5k0, 0x00), t2);
    /* Barrett reduction */
    t2 = _mm_clmulepi64_si128(_mm_and_si128(x1, low32), poly, 0x10);
    t2 = _mm_clmulepi64_si128(_mm_and_si128(t2, low32), poly, 0x00);
    x1 = _mm_xor_si128(x1, t2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}

static int clmul_ok = 0;
#endif

/* The layout the Python side (crc_kernel.py) must match; bump with any change of the signatures. */
#define ADAMDIAG_CRC_ABI 1
int64_t adamdiag_crc_abi(void) { return ADAMDIAG_CRC_ABI; }

/* Builds the tables and looks at the CPU; call once before any CRC (not thread-safe itself).
 * Returns the path the CRC takes: 1 PCLMULQDQ folding, 0 tables. */
int32_t adamdiag_crc_init(void) {
    if (!table_ready) build_tables();
#ifdef HAVE_CLMUL_PATH
    __builtin_cpu_init();
    clmul_ok = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
    return clmul_ok;
#else
    return 0;
#endif
}

/* zlib's crc32(crc, buf, n), and when dst is not NULL the n bytes copied to dst (not overlapping buf).
 * plain != 0 forces the table path (the tests' cross-check of both paths). */
uint32_t adamdiag_crc32_copy(uint32_t crc, void *dst, const void *buf, int64_t n, int32_t plain) {
    const unsigned char *p = (const unsigned char *)buf;
    unsigned char *d = (unsigned char *)dst;
    uint32_t c = ~crc;
    size_t left = n > 0 ? (size_t)n : 0;
    if (!table_ready || !p) return crc;
#ifdef HAVE_CLMUL_PATH
    if (!plain && clmul_ok && left >= 128) {
        size_t head = (16 - ((uintptr_t)p & 15)) & 15; /* aligned loads after it: no line-split loads */
        if (d) memcpy(d, p, head);
        c = crc_tables(c, p, head);
        p += head;
        d = d ? d + head : d;
        left -= head;
        size_t body = left & ~(size_t)15;
        c = crc_clmul(c, p, body, d);
        p += body;
        d = d ? d + body : d;
        left -= body;
    }
#endif
    (void)plain;
    if (d) memcpy(d, p, left);
    return ~crc_tables(c, p, left);
}

/* zlib's crc32(crc, buf, n). */
uint32_t adamdiag_crc32(uint32_t crc, const void *buf, int64_t n, int32_t plain) {
    return adamdiag_crc32_copy(crc, 0, buf, n, plain);
}
