// bf16 weight x fp32 activation products with many rows (prefill, eval): Y[m, n] (+)= sum_k bf16(X[m, k]) W[n, k]
// with the AVX-512 BF16 dot product (vdpbf16ps: two bf16 products per fp32 lane, summed in fp32), twice the
// multiply-adds per instruction of fp32 FMAs. The activations are rounded to bf16 (nearest even) once per call, as
// a bf16 autocast would; the weights are bf16 already. Used only where no gradient is recorded (linearBF16), so
// training keeps the fp32 activations of the tile-conversion path.
//
// Blocking: the output columns are cut into panels of 32 (two zmm of fp32 lanes), panels shared out over the
// threads by the caller. For each panel and each block of KC pairs of k, the weights are packed once into
// [pair][32 columns][2] (32 KB at KC = 256: it stays in L1 while every row block of X streams past it) and a
// 12-row x 32-column micro-kernel accumulates 24 zmm.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "CPixelShims.h"

enum { NR = 32, MR = 12, KC = 256 };

int pixel_bf16_gemm_isa(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
}

static uint16_t round_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return (uint16_t)((u >> 16) | 0x40);   // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

__attribute__((target("avx512f,avx512bw,avx512bf16")))
static void round_row_bf16(const float *x, uint16_t *d, long cols) {
    long c = 0;
    for (; c + 32 <= cols; c += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + c + 16), _mm512_loadu_ps(x + c));
        _mm512_storeu_si512((void *)(d + c), (__m512i)v);
    }
    for (; c < cols; c++) d[c] = round_bf16(x[c]);
}

void pixel_f32_rows_to_bf16(const float *x, long rows, long cols, long ldx, uint16_t *dst, long ldd) {
    int vec = pixel_bf16_gemm_isa();
    for (long r = 0; r < rows; r++) {
        uint16_t *d = dst + r * ldd;
        if (vec) round_row_bf16(x + r * ldx, d, cols);
        else for (long c = 0; c < cols; c++) d[c] = round_bf16(x[r * ldx + c]);
        for (long c = cols; c < ldd; c++) d[c] = 0;
    }
}

// Packs columns [n0, n0 + nn) (nn <= NR) and pairs [p0, p0 + np) of W [N, K] (row stride ldw, bf16) into
// out[p][j] = (W[n0 + j][2 (p0 + p)], W[n0 + j][2 (p0 + p) + 1]) as one 32-bit word (low half first, as vdpbf16ps
// reads it); columns past nn and a k past K are zero.
static void pack_panel(const uint16_t *w, long ldw, long K, long n0, long nn, long p0, long np, uint32_t *out) {
    if (nn < NR) memset(out, 0, (size_t)np * NR * 4);
    for (long j = 0; j < nn; j++) {
        const uint16_t *row = w + (n0 + j) * ldw;
        long k = 2 * p0, p = 0;
        long full = (K - k) / 2;
        if (full > np) full = np;
        for (; p < full; p++, k += 2) out[p * NR + j] = (uint32_t)row[k] | ((uint32_t)row[k + 1] << 16);
        for (; p < np; p++, k += 2) out[p * NR + j] = k < K ? (uint32_t)row[k] : 0;
    }
}

// C[r][0..nn) (+)= sum_p xb[r][p] . panel[p], for r < mr (mr <= MR, a constant after inlining).
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline))
static inline void micro(int mr, const uint32_t *xb, long ldxp, const uint32_t *panel, long np, float *c, long ldc,
                         long nn, int add) {
    __m512 a0[MR], a1[MR];
#pragma clang loop unroll(full)
    for (int r = 0; r < mr; r++) { a0[r] = _mm512_setzero_ps(); a1[r] = _mm512_setzero_ps(); }
    for (long p = 0; p < np; p++) {
        __m512bh b0 = (__m512bh)_mm512_load_si512((const void *)(panel + p * NR));
        __m512bh b1 = (__m512bh)_mm512_load_si512((const void *)(panel + p * NR + 16));
#pragma clang loop unroll(full)
        for (int r = 0; r < mr; r++) {
            __m512bh x = (__m512bh)_mm512_set1_epi32((int)xb[r * ldxp + p]);
            a0[r] = _mm512_dpbf16_ps(a0[r], x, b0);
            a1[r] = _mm512_dpbf16_ps(a1[r], x, b1);
        }
    }
    __mmask16 m0 = nn >= 16 ? 0xffff : (__mmask16)((1u << nn) - 1);
    __mmask16 m1 = nn >= 32 ? 0xffff : (nn <= 16 ? 0 : (__mmask16)((1u << (nn - 16)) - 1));
#pragma clang loop unroll(full)
    for (int r = 0; r < mr; r++) {
        float *cr = c + r * ldc;
        if (add) {
            a0[r] = _mm512_add_ps(a0[r], _mm512_maskz_loadu_ps(m0, cr));
            a1[r] = _mm512_add_ps(a1[r], _mm512_maskz_loadu_ps(m1, cr + 16));
        }
        _mm512_mask_storeu_ps(cr, m0, a0[r]);
        _mm512_mask_storeu_ps(cr + 16, m1, a1[r]);
    }
}

__attribute__((target("avx512f,avx512bw,avx512bf16")))
static void micro_any(int mr, const uint32_t *xb, long ldxp, const uint32_t *panel, long np, float *c, long ldc, long nn, int add) {
    switch (mr) {
    case 12: micro(12, xb, ldxp, panel, np, c, ldc, nn, add); break;
    case 11: micro(11, xb, ldxp, panel, np, c, ldc, nn, add); break;
    case 10: micro(10, xb, ldxp, panel, np, c, ldc, nn, add); break;
    case 9: micro(9, xb, ldxp, panel, np, c, ldc, nn, add); break;
    case 8: micro(8, xb, ldxp, panel, np, c, ldc, nn, add); break;
    case 7: micro(7, xb, ldxp, panel, np, c, ldc, nn, add); break;
    case 6: micro(6, xb, ldxp, panel, np, c, ldc, nn, add); break;
    case 5: micro(5, xb, ldxp, panel, np, c, ldc, nn, add); break;
    case 4: micro(4, xb, ldxp, panel, np, c, ldc, nn, add); break;
    case 3: micro(3, xb, ldxp, panel, np, c, ldc, nn, add); break;
    case 2: micro(2, xb, ldxp, panel, np, c, ldc, nn, add); break;
    default: micro(1, xb, ldxp, panel, np, c, ldc, nn, add); break;
    }
}

__attribute__((target("avx512f,avx512bw,avx512bf16")))
static void gemm_panels(const uint16_t *xb, long M, long ldx, long K, const uint16_t *w, long ldw, long N,
                        long panel0, long panel1, float *y, long ldy, int accumulate, uint32_t *pack) {
    const uint32_t *x32 = (const uint32_t *)xb;
    long ldxp = ldx / 2, pairs = (K + 1) / 2;
    for (long pn = panel0; pn < panel1; pn++) {
        long n0 = pn * NR, nn = N - n0 < NR ? N - n0 : NR;
        for (long p0 = 0; p0 < pairs; p0 += KC) {
            long np = pairs - p0 < KC ? pairs - p0 : KC;
            pack_panel(w, ldw, K, n0, nn, p0, np, pack);
            int add = accumulate || p0 > 0;
            long m = 0;
            for (; m + MR <= M; m += MR) micro(MR, x32 + m * ldxp + p0, ldxp, pack, np, y + m * ldy + n0, ldy, nn, add);
            if (m < M) micro_any((int)(M - m), x32 + m * ldxp + p0, ldxp, pack, np, y + m * ldy + n0, ldy, nn, add);
        }
    }
}

int pixel_bf16_gemm(const uint16_t *xb, long M, long ldx, long K, const uint16_t *w, long ldw, long N,
                    long panel0, long panel1, float *y, long ldy, int accumulate) {
    if (!pixel_bf16_gemm_isa() || (ldx & 1) || ldx < K + (K & 1)) return -1;
    if (M <= 0 || panel1 <= panel0) return 0;
    uint32_t pack[KC * NR] __attribute__((aligned(64)));   // 32 KB: a worker thread's stack holds it
    gemm_panels(xb, M, ldx, K, w, ldw, N, panel0, panel1, y, ldy, accumulate, pack);
    return 0;
}

long pixel_bf16_gemm_panel_width(void) { return NR; }

// How many times the fp32 multiply-adds per second of fp32 FMAs the bf16 dot product delivers on this core, measured
// (CPU flags cannot say: where vdpbf16ps issues once a cycle beside two FMA pipes it loses, where it doubles a single
// pipe's work it wins). Both loops run 24 independent accumulators, best of 3 runs of 480,000 instructions each
// (under 2 ms in all here).
static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

__attribute__((target("avx512f,avx512bf16"), noinline))
static float dot_loop(long iters, int seed) {
    __m512 a[24];
#pragma clang loop unroll(full)
    for (int i = 0; i < 24; i++) a[i] = _mm512_setzero_ps();
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80 + seed), y = (__m512bh)_mm512_set1_epi32(0x30003000);
    for (long t = 0; t < iters; t++) {
#pragma clang loop unroll(full)
        for (int i = 0; i < 24; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
    }
    __m512 s = a[0];
    for (int i = 1; i < 24; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f"), noinline))
static float fma_loop(long iters, int seed) {
    __m512 a[24];
#pragma clang loop unroll(full)
    for (int i = 0; i < 24; i++) a[i] = _mm512_setzero_ps();
    __m512 x = _mm512_set1_ps(1.0f + (float)seed), y = _mm512_set1_ps(1e-9f);
    for (long t = 0; t < iters; t++) {
#pragma clang loop unroll(full)
        for (int i = 0; i < 24; i++) a[i] = _mm512_fmadd_ps(x, y, a[i]);
    }
    __m512 s = a[0];
    for (int i = 1; i < 24; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

double pixel_bf16_dot_speedup(void) {
    if (!pixel_bf16_gemm_isa()) return 0;
    const long iters = 20000;   // x 24 accumulators
    double best_dot = 1e30, best_fma = 1e30;
    volatile float sink = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = seconds_now();
        sink += dot_loop(iters, rep);
        double t1 = seconds_now();
        sink += fma_loop(iters, rep);
        double t2 = seconds_now();
        if (t1 - t0 < best_dot) best_dot = t1 - t0;
        if (t2 - t1 < best_fma) best_fma = t2 - t1;
    }
    (void)sink;
    // a dot product does two multiply-adds per lane, an FMA one
    return best_dot > 0 ? 2.0 * best_fma / best_dot : 0;
}
