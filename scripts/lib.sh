# Shared by the project's scripts (sourced, not run): installing what a check needs, and the
# pinned Python virtualenvs of the interop referee and the peer benchmark. The sourcing script
# defines say and die.

# Installs Debian package $2 unless command $1 exists (as root, or with sudo); dies if the
# command is still missing.
need_command() {
    local command=$1 package=$2
    command -v "$command" >/dev/null && return 0
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    command -v apt-get >/dev/null || die "$command is missing (Debian package $package)"
    say "installing $command (Debian package $package)"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "$package" >/dev/null 2>&1 || {
        "${sudo[@]}" apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "$package" >/dev/null
    }
    command -v "$command" >/dev/null || die "$command is still missing after installing $package"
}

# Makes virtualenv $2 with interpreter $1 and the pinned requirements file $3 (wheels only),
# rebuilt only when the requirements or the interpreter change.
ensure_venv() {
    local python=$1 venv=$2 requirements=$3 stamp
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$python is $("$python" --version 2>&1); the pinned requirements need Python >= 3.11 (set PYTHON)"
    stamp="$("$python" -c 'import sys; print(sys.executable, sys.version)') $(sha256sum "$requirements")"
    if [[ -x $venv/bin/python && -f $venv/.stamp && "$(<"$venv/.stamp")" == "$stamp" ]]; then
        say "reusing $venv"
        return 0
    fi
    say "creating $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        --only-binary=:all: -r "$requirements"
    printf '%s' "$stamp" >"$venv/.stamp"
}
