/* FAKE cublas_v2.h for the CPU SIMT emulator (kernels/cuda/emu/run.sh): just what kernels/cuda/*.cu use. */
#ifndef EMU_CUBLAS_V2_H
#define EMU_CUBLAS_V2_H
typedef void *cublasHandle_t;
static inline int cublasCreate(cublasHandle_t *h) { *h = (void *)1; return 0; }
static inline int cublasDestroy(cublasHandle_t h) { (void)h; return 0; }
#endif
