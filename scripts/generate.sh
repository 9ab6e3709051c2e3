#!/usr/bin/env bash
# Writes what is generated from api/v1alpha1 with controller-gen (a tool
# of go.mod): the DeepCopy methods and the CRDs of examples/kind.
#   scripts/generate.sh                 write them in place (make generate)
#   scripts/generate.sh CRDFILE OBJDIR  write them elsewhere (the drift test)
set -euo pipefail
cd "$(dirname "$0")/.."
crd_file=${1:-examples/kind/01-crds.yaml}
obj_dir=${2:-api/v1alpha1}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go tool controller-gen object paths=./api/v1alpha1/... output:object:dir="$obj_dir" \
	crd:crdVersions=v1 output:crd:dir="$work"
{
	echo "# Generated from api/v1alpha1 by 'make generate'; do not edit."
	echo "# The policy CRDs: the same schema as the mesh file's AccessPolicy and"
	echo "# MTLSPolicy documents. The API server checks the shape; Bulwark checks"
	echo "# the rest and reports it in status.conditions[type=Accepted]."
	cat "$work"/bulwark.dev_accesspolicies.yaml "$work"/bulwark.dev_mtlspolicies.yaml
} >"$crd_file"
