/* Start under Open MPI: the coordinator (rank 0) and the workers are one MPMD job; MPI is used only for the launch,
 * the one-time exchange of the coordinator's endpoint and the local worker index, and MPI_Comm_spawn of replacement
 * workers. Training traffic never uses MPI (a collective that includes a dead rank hangs). Compiled with MPI only
 * when CMake finds Open MPI (LLAVA_HAVE_MPI); otherwise every call says the build has no MPI.
 * Tested by tests/integration/test_mpi_launch.c (deploy/mpi-run.sh with a worker killed and replaced). */
#ifndef LLAVA_MPILAUNCH_H
#define LLAVA_MPILAUNCH_H

#include <stddef.h>

typedef struct {
    int rank, size;    /* in MPI_COMM_WORLD (the first launch, or the replacement's own world of 1) */
    int spawned;       /* 1: started by MPI_Comm_spawn as a replacement */
    int local_index;   /* this worker's index among the first launch's workers on its node (picks the GPU) */
} mpilaunch_t;

/** 1 when this build has the MPI path, else 0. */
int mpilaunch_built(void);

/** 1 when the environment says an MPI launcher started this process (OMPI_COMM_WORLD_SIZE or PMIX_RANK set). */
int mpilaunch_under_mpirun(void);

/** MPI_Init (errors returned, not fatal), fills *ml; a spawned replacement disconnects from its parent here.
 *  Returns 0, LLAVA_EUNSUPPORTED (built without MPI) or LLAVA_EMPI (logged). */
int mpilaunch_init(int *argc, char ***argv, mpilaunch_t *ml);

/** Coordinator side of the start (rank 0, collective over the first launch): broadcasts `endpoint` (a bound
 *  ZeroMQ endpoint; a wildcard address 0.0.0.0 or * is replaced by this host's name) and takes part in the
 *  local-index exchange. Writes the endpoint workers connect to into published (len bytes).
 *  Returns 0, LLAVA_EINVAL (not rank 0, or too long) or LLAVA_EMPI. */
int mpilaunch_publish(const mpilaunch_t *ml, const char *endpoint, char *published, size_t len);

/** Worker side of mpilaunch_publish (rank > 0): receives the coordinator's endpoint into endpoint (len bytes) and
 *  sets ml->local_index. Returns 0, LLAVA_EINVAL (called on rank 0 or by a spawned replacement) or LLAVA_EMPI. */
int mpilaunch_receive(mpilaunch_t *ml, char *endpoint, size_t len);

/** Spawns one worker with MPI_Comm_spawn: exe with the NULL-terminated args (argv without argv[0]) on `host`
 *  (NULL or "" = where Open MPI chooses), waits until it has called MPI_Init, then disconnects from it so that
 *  its death never touches this process. *ms gets the time the spawn took.
 *  Returns 0 or LLAVA_EMPI (logged with Open MPI's message). */
int mpilaunch_spawn(const char *exe, char **args, const char *host, double *ms);

/** The address a worker binds its all-reduce endpoint on when the coordinator is at `coordinator_ep`: 127.0.0.1
 *  for a loopback coordinator, else this host's IPv4 address on the route to the coordinator (a warning when that
 *  is loopback). Writes into out (len bytes); returns 0, LLAVA_EINVAL or LLAVA_ENOTFOUND (logged). */
int mpilaunch_bind_host(const char *coordinator_ep, char *out, size_t len);

/** MPI_Finalize, once, if mpilaunch_init succeeded, then returns exit_code. Its closing fence includes every rank
 *  of the first launch, and with a rank dead it can wait forever (docs/deploy.md: about 1 test run in 5 under ASan,
 *  1 in 8 release): after MPILAUNCH_FINALIZE_S seconds the process says so and exits with exit_code without it
 *  (mpirun --enable-recovery accepts that). */
int mpilaunch_finalize(int exit_code);

#define MPILAUNCH_FINALIZE_S 10

#endif
