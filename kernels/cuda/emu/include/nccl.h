/* FAKE nccl.h for the CPU SIMT emulator (kernels/cuda/emu/run.sh): what kernels/cuda/nccl_comm.cu calls, with the
 * ranks of a communicator as host threads of one process (nccl_emu.cpp). Not NCCL: no transport, no rings. */
#ifndef EMU_NCCL_H
#define EMU_NCCL_H
#include <cuda_runtime.h>
#ifdef __cplusplus
extern "C" {
#endif
typedef enum { ncclSuccess = 0, ncclInternalError = 3, ncclInvalidArgument = 4, ncclInProgress = 7 } ncclResult_t;
typedef enum { ncclFloat32 = 7, ncclFloat64 = 8, ncclBfloat16 = 9 } ncclDataType_t;
typedef enum { ncclSum = 0 } ncclRedOp_t;
typedef struct { char internal[128]; } ncclUniqueId;
typedef struct emu_nccl_comm *ncclComm_t;
typedef struct { int blocking; } ncclConfig_t;
#define NCCL_CONFIG_INITIALIZER {1}
#define NCCL_SHRINK_ABORT 1
ncclResult_t ncclGetUniqueId(ncclUniqueId *id);
ncclResult_t ncclCommInitRankConfig(ncclComm_t *c, int world, ncclUniqueId id, int rank, ncclConfig_t *cfg);
ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *st);
ncclResult_t ncclCommAbort(ncclComm_t c);
ncclResult_t ncclCommFinalize(ncclComm_t c);
ncclResult_t ncclCommDestroy(ncclComm_t c);
ncclResult_t ncclCommCount(ncclComm_t c, int *n);
ncclResult_t ncclCommUserRank(ncclComm_t c, int *r);
ncclResult_t ncclCommShrink(ncclComm_t c, int *ex, int n, ncclComm_t *out, ncclConfig_t *cfg, int flags);
const char *ncclGetErrorString(ncclResult_t r);
ncclResult_t ncclAllReduce(const void *s, void *r, size_t n, ncclDataType_t t, ncclRedOp_t op, ncclComm_t c,
                           cudaStream_t st);
ncclResult_t ncclReduceScatter(const void *s, void *r, size_t n, ncclDataType_t t, ncclRedOp_t op, ncclComm_t c,
                               cudaStream_t st);
ncclResult_t ncclAllGather(const void *s, void *r, size_t n, ncclDataType_t t, ncclComm_t c, cudaStream_t st);
#ifdef __cplusplus
}
#endif
#endif
