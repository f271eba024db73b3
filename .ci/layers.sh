#!/usr/bin/env bash
# The structure ARCHITECTURE.md promises, checked from the source:
#  1. lapin (and amq_protocol, its frame parser) is named only in
#     host/src/amqp/, redis only in host/src/dedup/,
#     wasmtime (and wasmtime_wasi) only in host/src/runtime/;
#  2. a module imports only from modules on a lower layer (no arrow runs
#     back up, no two modules import each other).
# Comments are ignored. Prints every offending line and fails if any.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../host/src"

# Layer of each top-level module: imports go from a higher number to a
# lower one only. Keep in step with ARCHITECTURE.md's layer list.
declare -A layer=(
    [config]=0 [shutdown]=0 [logging]=0 [client]=0 [scaffold]=0 [recent]=0
    [retry]=1 [metrics]=1 [telemetry]=1 [signing]=1
    [amqp]=2 [dedup]=2 [runtime]=2
    [check]=3 [versions]=3 [dlq]=3 [shadow]=3 [canary]=3 [trial]=3
    [context]=4
    [liveness]=6
    [pipeline]=5
    [registry]=6
    [server]=7 [admin]=7 [watch]=7 [fleet]=7
    [app]=8 [cli]=8
)

bad=0
# Code lines of a file, with line numbers, without // comments.
code() { grep -nv '^[[:space:]]*//' "$1" | sed 's#[[:space:]]//.*$##' || true; }

# 1. Client libraries stay inside their modules.
for pair in lapin:amqp amq_protocol:amqp redis:dedup wasmtime:runtime wasmtime_wasi:runtime wasmtime_wasi_http:runtime hyper:runtime; do
    lib=${pair%%:*} home=${pair#*:}
    while IFS= read -r f; do
        case "$f" in ./"$home"/*) continue ;; esac
        hits=$(code "$f" | grep -E "(^|[^A-Za-z0-9_])(::)?${lib}::|use ${lib}\b|extern crate ${lib}\b" || true)
        if [ -n "$hits" ]; then
            printf 'boundary: %s names %s outside %s/:\n%s\n' "${f#./}" "$lib" "$home" "$hits"
            bad=1
        fi
    done < <(find . -name '*.rs' | sort)
done

# 2. Imports run downward: every `crate::NAME` path in code (grouped
#    imports `use crate::{a, b::c}` included, across lines) must name a
#    module on a lower layer.
layers_py=$(for m in "${!layer[@]}"; do printf '%s=%s ' "$m" "${layer[$m]}"; done)
if ! LAYERS="$layers_py" python3 - <<'PY'
import os, re, sys
layer = dict(kv.split("=") for kv in os.environ["LAYERS"].split())
layer = {k: int(v) for k, v in layer.items()}
bad = False
for root, _, files in sorted(os.walk(".")):
    for name in sorted(files):
        if not name.endswith(".rs"):
            continue
        path = os.path.join(root, name)[2:]
        top = path.split("/")[0].removesuffix(".rs")
        if top in ("lib", "main"):
            continue
        if top not in layer:
            print(f"layers: module {top} ({path}) has no layer in .ci/layers.sh")
            bad = True
            continue
        text = open(os.path.join(root, name)).read()
        # Drop comments, keep line numbers.
        text = re.sub(r"//[^\n]*", "", text)
        for m in re.finditer(r"crate::(\{[^}]*\}|[a-z_]+)", text):
            line = text.count("\n", 0, m.start()) + 1
            group = m.group(1)
            targets = re.findall(r"(?:^|[{,\s])([a-z_]+)", group.strip("{}")) if group.startswith("{") else [group]
            for t in targets:
                if t == top or t == "self":
                    continue
                theirs = layer.get(t)
                if theirs is None or theirs >= layer[top]:
                    print(f"layers: {path}:{line} (layer {layer[top]}) imports crate::{t} (layer {theirs if theirs is not None else '?'})")
                    bad = True
sys.exit(1 if bad else 0)
PY
then
    bad=1
fi

if [ "$bad" = 0 ]; then
    echo "layers: every import runs downward; lapin, redis and wasmtime stay in their modules"
fi
exit "$bad"
