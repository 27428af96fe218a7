#!/usr/bin/env bash
# Generates the Go stubs from the repository's protos into ./sextantv1 (import path
# sextantexample/sextantv1) with protoc, protoc-gen-go and protoc-gen-go-grpc, and links this
# directory into ./.gopath so that a GOPATH-mode build (GO111MODULE=off) finds the stubs too.
set -euo pipefail
cd "$(dirname "$0")"
PROTO_ROOT=../../proto
PKG=sextantexample/sextantv1
maps=()
for f in "$PROTO_ROOT"/sextant/v1/*.proto; do
  rel=${f#"$PROTO_ROOT"/}
  maps+=("--go_opt=M$rel=$PKG" "--go-grpc_opt=M$rel=$PKG")
done
rm -rf sextantv1
protoc -I"$PROTO_ROOT" \
  --go_out=. --go_opt=module=sextantexample \
  --go-grpc_out=. --go-grpc_opt=module=sextantexample \
  "${maps[@]}" "$PROTO_ROOT"/sextant/v1/*.proto
mkdir -p .gopath/src
ln -sfn ../.. .gopath/src/sextantexample
