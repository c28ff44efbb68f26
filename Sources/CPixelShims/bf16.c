// bf16 weight x fp32 vector products for decode (issue 12): y[r] = sum_c w[r, c] * x[c] with the bf16 weights
// widened to fp32 in registers (exact) and multiplied with FMAs, so the result is the fp32 product of the
// rounded weights, only summed in another order than SGEMM's. Decode reads every weight once per token and is
// bound by memory bandwidth: widening in registers reads 2 bytes per weight instead of converting a tile to fp32
// (2 bytes read, 4 written, 4 read again). The instruction set is chosen at run time from the CPU flags.
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "CPixelShims.h"

int pixel_bf16_gemv_isa(void) {
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
    return 0;
}

static float bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void gemv_scalar(const uint16_t *w, const float *x, float *y, long rows, long cols, long ldw) {
    for (long r = 0; r < rows; r++) {
        const uint16_t *row = w + r * ldw;
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        long c = 0;
        for (; c + 8 <= cols; c += 8)
            for (int k = 0; k < 8; k++) acc[k] += bf16_to_f32(row[c + k]) * x[c + k];
        float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (; c < cols; c++) s += bf16_to_f32(row[c]) * x[c];
        y[r] = s;
    }
}

__attribute__((target("avx2,fma")))
static void gemv_avx2(const uint16_t *w, const float *x, float *y, long rows, long cols, long ldw) {
    long r = 0;
    // two rows at a time: each x load feeds two FMAs
    for (; r + 2 <= rows; r += 2) {
        const uint16_t *w0 = w + r * ldw, *w1 = w0 + ldw;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
        long c = 0;
        for (; c + 16 <= cols; c += 16) {
            __m256 xa = _mm256_loadu_ps(x + c), xb = _mm256_loadu_ps(x + c + 8);
            __m256i p0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w0 + c)));
            __m256i q0 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w0 + c + 8)));
            __m256i p1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w1 + c)));
            __m256i q1 = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(w1 + c + 8)));
            a0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(p0, 16)), xa, a0);
            b0 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(q0, 16)), xb, b0);
            a1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(p1, 16)), xa, a1);
            b1 = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(q1, 16)), xb, b1);
        }
        float t0[8], t1[8];
        _mm256_storeu_ps(t0, _mm256_add_ps(a0, b0));
        _mm256_storeu_ps(t1, _mm256_add_ps(a1, b1));
        float s0 = ((t0[0] + t0[4]) + (t0[1] + t0[5])) + ((t0[2] + t0[6]) + (t0[3] + t0[7]));
        float s1 = ((t1[0] + t1[4]) + (t1[1] + t1[5])) + ((t1[2] + t1[6]) + (t1[3] + t1[7]));
        for (; c < cols; c++) {
            s0 += bf16_to_f32(w0[c]) * x[c];
            s1 += bf16_to_f32(w1[c]) * x[c];
        }
        y[r] = s0;
        y[r + 1] = s1;
    }
    if (r < rows) gemv_scalar(w + r * ldw, x, y + r, rows - r, cols, ldw);
}

__attribute__((target("avx512f,avx512bw")))
static void gemv_avx512(const uint16_t *w, const float *x, float *y, long rows, long cols, long ldw) {
    long r = 0;
    for (; r + 2 <= rows; r += 2) {
        const uint16_t *w0 = w + r * ldw, *w1 = w0 + ldw;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
        long c = 0;
        for (; c + 32 <= cols; c += 32) {
            __m512 xa = _mm512_loadu_ps(x + c), xb = _mm512_loadu_ps(x + c + 16);
            __m512i p0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w0 + c)));
            __m512i q0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w0 + c + 16)));
            __m512i p1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w1 + c)));
            __m512i q1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w1 + c + 16)));
            a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(p0, 16)), xa, a0);
            b0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(q0, 16)), xb, b0);
            a1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(p1, 16)), xa, a1);
            b1 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(q1, 16)), xb, b1);
        }
        float s0 = _mm512_reduce_add_ps(_mm512_add_ps(a0, b0));
        float s1 = _mm512_reduce_add_ps(_mm512_add_ps(a1, b1));
        for (; c < cols; c++) {
            s0 += bf16_to_f32(w0[c]) * x[c];
            s1 += bf16_to_f32(w1[c]) * x[c];
        }
        y[r] = s0;
        y[r + 1] = s1;
    }
    if (r < rows) gemv_scalar(w + r * ldw, x, y + r, rows - r, cols, ldw);
}

void pixel_bf16_gemv(int isa, const uint16_t *w, const float *x, float *y, long rows, long cols, long ldw) {
    if (rows <= 0) return;
    if (cols <= 0) {
        for (long r = 0; r < rows; r++) y[r] = 0;
        return;
    }
    if (isa >= 2 && pixel_bf16_gemv_isa() >= 2) gemv_avx512(w, x, y, rows, cols, ldw);
    else if (isa >= 1 && pixel_bf16_gemv_isa() >= 1) gemv_avx2(w, x, y, rows, cols, ldw);
    else gemv_scalar(w, x, y, rows, cols, ldw);
}

__attribute__((target("avx2")))
static void to_f32_avx2(const uint16_t *src, float *dst, long count) {
    long i = 0;
    for (; i + 16 <= count; i += 16) {
        __m256i a = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i)));
        __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i + 8)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_slli_epi32(a, 16));
        _mm256_storeu_si256((__m256i *)(dst + i + 8), _mm256_slli_epi32(b, 16));
    }
    for (; i < count; i++) dst[i] = bf16_to_f32(src[i]);
}

void pixel_bf16_to_f32(const uint16_t *src, float *dst, long count) {
    if (count <= 0) return;
    if (pixel_bf16_gemv_isa() >= 1) { to_f32_avx2(src, dst, count); return; }
    for (long i = 0; i < count; i++) dst[i] = bf16_to_f32(src[i]);
}
