#!/usr/bin/env bash
# Runs a job spec under Open MPI: coordinator (rank 0) and N workers as one MPMD mpirun job with --enable-recovery
# (survivors live on when a worker dies; the coordinator replaces it with MPI_Comm_spawn), then llava-run submits,
# shows progress and evaluates, like the local `llava-run`. One node by default; --hostfile FILE or a Slurm
# allocation (deploy/slurm.sbatch) for several. Usage: bash deploy/mpi-run.sh JOB.yaml --workers N [options]
# Tested by tests/integration/test_mpi_launch.c.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: deploy/mpi-run.sh JOB.yaml [options] [-- extra mpirun options]
Runs JOB.yaml with llava-coordinator (rank 0) and N llava-worker ranks started by mpirun --enable-recovery.
A dead worker is replaced with MPI_Comm_spawn on its host (bounded by the spec's cluster.max_replacements).

  --workers N        worker ranks (default: SLURM_NTASKS - 1 under Slurm, else the spec's cluster.workers)
  --hostfile FILE    run on the hosts of an Open MPI hostfile (the coordinator takes the first slot)
  --bind EP          the coordinator's endpoint (default tcp://127.0.0.1:* on one node, else tcp://0.0.0.0:*
                     announced as this host's name; give tcp://ADDR:* when that name resolves to loopback)
  --threads T        compute threads per worker (default: cores / workers on one node, else 1)
  --device DEV       cpu or cuda (each worker takes GPU <its index among workers on its node>); default: the
                     spec's cluster.device
  --state DIR        coordinator state directory (default ./llava-state)
  --backend NAME     model (default) or sim (no model; for tests)
  --sim-mb-ms MS     sim backend: milliseconds per micro-batch
  --log FILE         mpirun's output (every rank's log; default STATE/mpirun.log)
  --build DIR        where the programs are (default: $LLAVA_BUILD_DIR, else ./build)
  --no-eval          skip the spec's evaluation
  -q, --quiet        no progress, no daemon logs on the terminal (they still go to --log)
  -v, --verbose      debug logging from the daemons
  -h, --help         this help

On several hosts the coordinator listens on every interface and tells the workers its host name; data, model and
checkpoint paths must be on a file system every host sees. Running as root adds --allow-run-as-root.
EOF
}

src_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -n "${SLURM_SUBMIT_DIR:-}" ] && [ ! -f "$src_dir/CMakeLists.txt" ] && src_dir=$SLURM_SUBMIT_DIR
spec="" workers="" hostfile="" bind="" threads="" device="" state=llava-state backend=model sim_ms=0 log=""
build="${LLAVA_BUILD_DIR:-}" quiet=0 verbose=0 no_eval=0 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --workers) workers=$2; shift 2 ;;
    --hostfile) hostfile=$2; shift 2 ;;
    --bind) bind=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --state) state=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --sim-mb-ms) sim_ms=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --no-eval) no_eval=1; shift ;;
    -q|--quiet) quiet=1; shift ;;
    -v|--verbose) verbose=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -*) echo "mpi-run.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
    *) [ -z "$spec" ] || { echo "mpi-run.sh: one job spec only (try --help)" >&2; exit 2; }; spec=$1; shift ;;
  esac
done
[ -n "$spec" ] || { usage >&2; exit 2; }
[ -f "$spec" ] || { echo "mpi-run.sh: no job spec at $spec" >&2; exit 2; }
multi=0
[ -n "$hostfile" ] && multi=1
[ -n "${SLURM_JOB_ID:-}" ] && multi=1
[ -n "$build" ] || build="$src_dir/build"
for p in llava-coordinator llava-worker llava-run llavactl; do
  [ -x "$build/$p" ] || { echo "mpi-run.sh: $build/$p not found (build first, or pass --build)" >&2; exit 2; }
done
command -v mpirun >/dev/null || { echo "mpi-run.sh: mpirun not found (apt-get install openmpi-bin)" >&2; exit 2; }
"$build/llavactl" validate "$spec" >/dev/null || exit 2 # its problems are printed; nothing is started
# cluster.workers and cluster.device from the normalised spec (llavactl prints every default)
cluster=$("$build/llavactl" --json validate "$spec" 2>/dev/null | tr -d ' \t\n' | grep -o '"cluster":{[^}]*}' | head -n 1)
if [ -z "$workers" ] && [ -n "${SLURM_NTASKS:-}" ]; then workers=$((SLURM_NTASKS - 1)); fi
[ -n "$workers" ] || workers=$(echo "$cluster" | sed -n 's/.*"workers":\([0-9]*\).*/\1/p')
[ -n "$device" ] || device=$(echo "$cluster" | sed -n 's/.*"device":"\([a-z]*\)".*/\1/p')
[ -n "$device" ] || device=cpu
if ! [[ "$workers" =~ ^[0-9]+$ ]] || [ "$workers" -lt 1 ] || [ "$workers" -gt 256 ]; then
  echo "mpi-run.sh: --workers must be 1..256 (try --help)" >&2
  exit 2
fi
if [ -z "$threads" ]; then
  if [ "$multi" = 0 ]; then threads=$(( $(nproc) / workers )); else threads=1; fi
  [ "$threads" -ge 1 ] || threads=1
fi
mkdir -p "$state"
state=$(cd "$state" && pwd)
[ -n "$log" ] || log="$state/mpirun.log"
: >"$log"

mpi=(mpirun --enable-recovery --bind-to none)
[ "$(id -u)" = 0 ] && mpi+=(--allow-run-as-root)
if [ -n "$hostfile" ]; then mpi+=(--hostfile "$hostfile"); fi
[ "$multi" = 0 ] && mpi+=(--oversubscribe) # CPU workers on one small machine may outnumber its cores
if [ -z "$bind" ]; then
  bind="tcp://127.0.0.1:*"
  [ "$multi" = 1 ] && bind="tcp://0.0.0.0:*"
fi
wargs="--threads $threads --device $device --backend $backend --sim-mb-ms $sim_ms"
[ "$verbose" = 1 ] && wargs+=" -v"
vflag=()
[ "$verbose" = 1 ] && vflag=(-v)
# shellcheck disable=SC2086 # wargs is split on purpose, as the coordinator splits --worker-args
"${mpi[@]}" "${extra[@]}" \
  -n 1 "$build/llava-coordinator" --mpi --bind "$bind" --state "$state" \
    --worker-exe "$build/llava-worker" --worker-args "$wargs" "${vflag[@]}" \
  : -n "$workers" "$build/llava-worker" --mpi $wargs >"$log" 2>&1 &
mpirun_pid=$!
tail_pid=""
if [ "$quiet" = 0 ]; then
  tail -n +1 -f "$log" --pid="$mpirun_pid" >&2 &
  tail_pid=$!
fi
finish() {
  kill -TERM "$mpirun_pid" 2>/dev/null || true
  wait "$mpirun_pid" 2>/dev/null || true
  [ -z "$tail_pid" ] || kill "$tail_pid" 2>/dev/null || true
}
trap 'finish; exit 130' INT TERM

ep=""
for _ in $(seq 1 600); do # 60 s for mpirun to start every rank and rank 0 to publish its endpoint
  ep=$(sed -n 's/.*MPI: published endpoint \([^ ]*\) to .*/\1/p' "$log" | head -n 1)
  [ -n "$ep" ] && break
  kill -0 "$mpirun_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$ep" ]; then
  echo "mpi-run.sh: the coordinator did not publish its endpoint; mpirun's output ($log):" >&2
  [ "$quiet" = 0 ] || tail -n 40 "$log" >&2
  finish
  exit 1
fi

run=("$build/llava-run" "$spec" --coordinator "$ep" --backend "$backend")
[ "$no_eval" = 1 ] && run+=(--no-eval)
[ "$quiet" = 1 ] && run+=(-q)
code=0
"${run[@]}" || code=$?
# The job has ended and llava-run has seen it. mpirun forwards SIGUSR1 to every rank (SIGTERM would make it kill
# them): the coordinator sends the workers SHUTDOWN, every rank calls MPI_Finalize and exits, then mpirun does.
kill -USR1 "$mpirun_pid" 2>/dev/null || true
for _ in $(seq 1 300); do
  kill -0 "$mpirun_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$mpirun_pid" 2>/dev/null; then # e.g. rank 0 died and a coordinator was restarted outside mpirun
  echo "mpi-run.sh: the ranks did not stop within 30 s of SIGUSR1; terminating mpirun (the job's result stands)" >&2
fi
finish
exit "$code"
