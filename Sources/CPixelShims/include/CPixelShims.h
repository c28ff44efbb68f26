#ifndef CPIXELSHIMS_H
#define CPIXELSHIMS_H
// Thin C layer under pixellm.
//  * MPI: OpenMPI's MPI_COMM_WORLD / MPI_FLOAT / MPI_SUM / MPI_IN_PLACE are macros that expand to
//    address-of-extern casts, which Swift cannot import. They are re-exported as getters whose Swift
//    names are the C names.
//  * HDF5: H5T_NATIVE_* and H5F_ACC_* call H5open() inside the macro; H5P_DEFAULT imports as Int32.
//  * OpenBLAS: loaded with dlopen *after* OPENBLAS_CORETYPE / OPENBLAS_NUM_THREADS are decided, because
//    OpenBLAS 0.3.21 reads them in its load-time constructor and otherwise picks the slow "Prescott" core
//    on these CPUs. Nothing in pixellm links libopenblas directly.
#include <stddef.h>
#include <stdint.h>
#include <mpi.h>
#include <hdf5.h>

#define PIXEL_SWIFT_NAME(_name) __attribute__((swift_name(_name)))
#define PIXEL_INLINE static __inline__ __attribute__((always_inline))
#define PIXEL_MPI_CONST(type, var) \
    PIXEL_INLINE type pixel_get_##var(void) PIXEL_SWIFT_NAME("getter:" #var "()") { return var; }

PIXEL_MPI_CONST(MPI_Comm, MPI_COMM_WORLD)
PIXEL_MPI_CONST(MPI_Datatype, MPI_FLOAT)
PIXEL_MPI_CONST(MPI_Datatype, MPI_DOUBLE)
PIXEL_MPI_CONST(MPI_Datatype, MPI_INT)
PIXEL_MPI_CONST(MPI_Datatype, MPI_INT64_T)
PIXEL_MPI_CONST(MPI_Datatype, MPI_BYTE)
PIXEL_MPI_CONST(MPI_Op, MPI_SUM)
PIXEL_MPI_CONST(MPI_Op, MPI_MAX)
PIXEL_MPI_CONST(MPI_Op, MPI_MIN)
PIXEL_MPI_CONST(MPI_Errhandler, MPI_ERRORS_RETURN)
PIXEL_MPI_CONST(MPI_Request, MPI_REQUEST_NULL)
PIXEL_INLINE void *pixel_mpi_in_place(void) PIXEL_SWIFT_NAME("getter:MPI_IN_PLACE()") { return MPI_IN_PLACE; }
PIXEL_INLINE MPI_Status *pixel_mpi_status_ignore(void) PIXEL_SWIFT_NAME("getter:MPI_STATUS_IGNORE()") { return MPI_STATUS_IGNORE; }
PIXEL_INLINE int pixel_mpi_thread_funneled(void) PIXEL_SWIFT_NAME("getter:MPI_THREAD_FUNNELED()") { return MPI_THREAD_FUNNELED; }
PIXEL_INLINE int pixel_mpi_success(void) PIXEL_SWIFT_NAME("getter:MPI_SUCCESS()") { return MPI_SUCCESS; }
PIXEL_INLINE int pixel_mpi_max_error_string(void) PIXEL_SWIFT_NAME("getter:MPI_MAX_ERROR_STRING()") { return MPI_MAX_ERROR_STRING; }

/// MPI library name and version as reported by MPI_Get_library_version (works before MPI_Init).
const char *pixel_mpi_library_version(void);
/// MPI_Init_thread(FUNNELED) once, registers MPI_Finalize with atexit, sets MPI_ERRORS_RETURN on
/// MPI_COMM_WORLD. Returns an MPI error code (MPI_SUCCESS on success). Safe to call repeatedly.
int pixel_mpi_init(int *provided);
/// Finalizes MPI if it was initialised and not yet finalized.
void pixel_mpi_finalize(void);
/// 1 when this process was started by an MPI launcher (mpirun/srun/hydra), from its environment.
int pixel_mpi_launched(void);

// ---------------------------------------------------------------------------------------------------
// HDF5
PIXEL_INLINE hid_t pixel_h5t_native_float(void) { return H5T_NATIVE_FLOAT; }
PIXEL_INLINE hid_t pixel_h5t_native_double(void) { return H5T_NATIVE_DOUBLE; }
PIXEL_INLINE hid_t pixel_h5t_native_int32(void) { return H5T_NATIVE_INT32; }
PIXEL_INLINE hid_t pixel_h5t_native_int64(void) { return H5T_NATIVE_INT64; }
PIXEL_INLINE hid_t pixel_h5t_native_uint8(void) { return H5T_NATIVE_UINT8; }
PIXEL_INLINE unsigned pixel_h5f_acc_trunc(void) { return H5F_ACC_TRUNC; }
PIXEL_INLINE unsigned pixel_h5f_acc_rdonly(void) { return H5F_ACC_RDONLY; }
PIXEL_INLINE unsigned pixel_h5f_acc_rdwr(void) { return H5F_ACC_RDWR; }
PIXEL_INLINE hid_t pixel_h5p_default(void) { return H5P_DEFAULT; }
PIXEL_INLINE hid_t pixel_h5s_all(void) { return H5S_ALL; }
PIXEL_INLINE hid_t pixel_h5p_link_create(void) { return H5P_LINK_CREATE; }
/// Turns off HDF5's automatic error printing; pixellm reports errors itself.
void pixel_h5_quiet(void);
/// HDF5 library version "major.minor.release".
const char *pixel_h5_version(void);
/// Writes the full paths of every dataset in the file, '\n'-separated, into a malloc'd string the
/// caller frees with free(). Returns NULL on error.
char *pixel_h5_list_datasets(hid_t file);
/// Class of a dataset's type: 0 float, 1 integer, 2 other. Size in bytes via *size.
int pixel_h5_dataset_type_class(hid_t dset, size_t *size);

// ---------------------------------------------------------------------------------------------------
// OpenBLAS, loaded at run time.
/// Decides OPENBLAS_CORETYPE (unless set by the user) and OPENBLAS_NUM_THREADS (unless set), then
/// dlopens OpenBLAS. Returns 0 on success; on failure writes a message readable by pixel_blas_error().
int pixel_blas_init(void);
const char *pixel_blas_error(void);
/// Core OpenBLAS reports in use (openblas_get_corename), e.g. "SkylakeX".
const char *pixel_blas_corename(void);
/// The core requested through OPENBLAS_CORETYPE and where that value came from ("user" or "cpu-flags").
const char *pixel_blas_requested_core(void);
const char *pixel_blas_core_source(void);
const char *pixel_blas_config(void);
const char *pixel_blas_library_path(void);
/// Threads: source is "user" (OPENBLAS_NUM_THREADS set) or "cores/local-ranks".
int pixel_blas_num_threads(void);
const char *pixel_blas_threads_source(void);
void pixel_blas_set_num_threads(int n);
/// 1 when libopenblas was already mapped into the process before pixel_blas_init (its core then
/// could not be chosen).
int pixel_blas_was_preloaded(void);
/// CPU feature summary, e.g. "avx512f avx2 fma avx".
const char *pixel_cpu_features(void);
/// Cores this process may run on (sched_getaffinity), and cores online.
int pixel_cpu_affinity_count(void);
int pixel_cpu_online_count(void);

/// Row-major single-precision GEMM: C = alpha * op(A) op(B) + beta * C. trans: 0 = N, 1 = T.
void pixel_sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);

/// bf16 weights x fp32 vector (bf16.c): y[r] = sum_c w[r * ldw + c] * x[c] for r < rows, the weights widened to
/// fp32 in registers. isa: 2 AVX-512, 1 AVX2 + FMA, 0 portable C (a request the CPU cannot run falls back).
int pixel_bf16_gemv_isa(void);
void pixel_bf16_gemv(int isa, const uint16_t *w, const float *x, float *y, long rows, long cols, long ldw);
/// bf16 -> fp32 (exact: the bits shifted into the high half), `count` values from `src` (2-byte aligned) to `dst`,
/// 16 at a time with AVX2 when the CPU has it.
void pixel_bf16_to_f32(const uint16_t *src, float *dst, long count);
/// bf16 x bf16 products with fp32 sums for many rows (bf16gemm.c, AVX-512 BF16 only): 1 when the CPU has them.
int pixel_bf16_gemm_isa(void);
/// Rounds `rows` rows of `cols` floats (row stride `ldx`) to bf16, nearest even, into `dst` (row stride `ldd`),
/// zero-filling each row from `cols` to `ldd`.
void pixel_f32_rows_to_bf16(const float *x, long rows, long cols, long ldx, uint16_t *dst, long ldd);
/// Y[m, n] (+ Y[m, n] when `accumulate`) = sum_k xb[m, k] w[n, k] for m < M and n in the column panels
/// [panel0, panel1) of width pixel_bf16_gemm_panel_width() (the last one cut at N). `xb`: bf16 [M, K], row stride
/// `ldx` (even, >= K rounded up to even, zero past K); `w`: bf16 [N, K], row stride `ldw`. Returns 0, or -1 (nothing written) when the
/// CPU lacks AVX-512 BF16 or `ldx` is wrong. Uses 32 KB of the calling thread's stack.
int pixel_bf16_gemm(const uint16_t *xb, long M, long ldx, long K, const uint16_t *w, long ldw, long N,
                    long panel0, long panel1, float *y, long ldy, int accumulate);
long pixel_bf16_gemm_panel_width(void);
/// The bf16 dot product's multiply-adds per second over fp32 FMAs' on this core, measured (about 2 ms); 0 without
/// AVX-512 BF16.
double pixel_bf16_dot_speedup(void);

/// Memory-mapped checkpoint files (mapguard.c): a SIGBUS inside a registered mapping (the file was truncated under
/// the process) prints the file and offset and exits with status 74 instead of dying by the signal. register returns
/// 1 when the mapping is guarded (0: the table of 4096 mappings is full; the mapping still works unguarded).
int pixel_mapguard_register(const void *start, size_t length, const char *path);
void pixel_mapguard_unregister(const void *start);

// ---------------------------------------------------------------------------------------------------
// PixelDistributed additions (collectives). Constants Swift cannot import from OpenMPI's mpi.h.
PIXEL_INLINE MPI_Status *pixel_mpi_statuses_ignore(void) PIXEL_SWIFT_NAME("getter:MPI_STATUSES_IGNORE()") { return MPI_STATUSES_IGNORE; }
PIXEL_MPI_CONST(MPI_Comm, MPI_COMM_NULL)
PIXEL_MPI_CONST(MPI_Datatype, MPI_DATATYPE_NULL)
// End of PixelDistributed additions.

#endif
