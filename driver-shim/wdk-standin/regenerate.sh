#!/usr/bin/env bash
# Regenerates the stand-in wdk-sys's bindings (wdk-sys/src/generated/<arch>/*.rs)
# from wdk-sys/standin.h, the way wdk-sys 0.5.2's build script runs bindgen on
# the WDK (wdk-build 0.6.0's `Builder::wdk_default`: use_core, derive Default,
# generate_cstr, no include-path detection, -fno-builtin, the MSVC extension
# flags, the per-architecture and WDM defines, module-constants enums,
# must_use NTSTATUS, prettyplease, rust target = wdk-build's rust-version (1.91)
# and edition 2024 (wdk-build's, as get_rust_edition reads it); one file for types, one for vars
# (constants), one for the rest (functions), as wdk-sys splits them).
#
# For maintainers only: the generated files are committed, and nothing in the
# test command runs this. Needs libclang (apt-get install libclang-dev) and
# bindgen-cli at wdk-sys's bindgen version (cargo install bindgen-cli --version 0.73.2).
set -euo pipefail
cd "$(dirname "$0")/wdk-sys"

want=0.73.2
have=$(bindgen --version | awk '{print $2}')
[ "$have" = "$want" ] || { echo "bindgen $want wanted, found $have" >&2; exit 1; }

common=(
  --use-core --with-derive-default --generate-cstr --no-include-path-detection
  --default-enum-style moduleconsts --must-use-type NTSTATUS --must-use-type HRESULT
  --formatter prettyplease --rust-target 1.91 --rust-edition 2024
  --blocklist-item ExAllocatePoolWithTag --blocklist-item ExAllocatePoolWithQuotaTag
  --blocklist-item ExAllocatePoolWithTagPriority --blocklist-item ExAllocatePool
)
clang_common=(
  -fno-builtin -fms-compatibility -fms-extensions -fdelayed-template-parsing
  -Wno-pragma-pack -Wno-ignored-attributes -Wno-microsoft
  -D_KERNEL_MODE -DPOOL_NX_OPTIN_AUTO=1 -DPOOL_ZEROING_NX_OPTIN_AUTO=1
)

gen() { # arch triple defines...
  local arch=$1 triple=$2; shift 2
  local out=src/generated/$arch
  mkdir -p "$out"
  local clang=(--target="$triple" "${clang_common[@]}" "$@")
  bindgen standin.h "${common[@]}" --generate types -o "$out/types.rs" -- "${clang[@]}"
  bindgen standin.h "${common[@]}" --generate vars -o "$out/constants.rs" -- "${clang[@]}"
  bindgen standin.h "${common[@]}" --generate functions,methods,constructors,destructors \
    -o "$out/ntddk.rs" -- "${clang[@]}"
}

gen x86_64 x86_64-pc-windows-msvc -D_WIN64 -D_AMD64_ -DAMD64
gen aarch64 aarch64-pc-windows-msvc -D_WIN64 -D_ARM64_ -DARM64 -D_USE_DECLSPECS_FOR_SAL=1 -DSTD_CALL
echo "regenerated $(ls src/generated/*/*.rs | wc -l) files"
