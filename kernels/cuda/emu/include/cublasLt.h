/* FAKE cublasLt.h for the CPU SIMT emulator (kernels/cuda/emu/run.sh): just what kernels/cuda/*.cu use. */
#ifndef EMU_CUBLASLT_H
#define EMU_CUBLASLT_H
typedef void *cublasLtHandle_t;
static inline int cublasLtCreate(cublasLtHandle_t *h) { *h = (void *)1; return 0; }
static inline int cublasLtDestroy(cublasLtHandle_t h) { (void)h; return 0; }
#endif
