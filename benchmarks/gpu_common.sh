# Set-up shared by the gpu_*.sh scripts (sourced, not run): the output folder, the clock and the data.
# The caller sets BUDGET (seconds for the whole script) first; OUT and CIFAR_ARCHIVE may come from the
# environment.
OUT=${OUT:-gpu_out}
ARCHIVE=${CIFAR_ARCHIVE:-.device_data/cifar10-jpeg.tar.gz}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1  # logs arrive line by line, so a time-boxed stage still leaves its last lines
start=$(date +%s)

# Seconds left of $BUDGET after keeping $1 seconds in reserve; at least 5, so that `timeout` always gets a
# positive time and a late stage still writes its log.
left() { local s=$(( BUDGET - ($(date +%s) - start) - ${1:-0} )); echo $(( s > 5 ? s : 5 )); }

# CIFAR-10 under data/, unpacked from $ARCHIVE on the first call of a fresh machine.
ensure_cifar10() { mkdir -p data && { [ -d data/CIFAR10/train ] || tar xzf "$ARCHIVE" -C data; }; }
