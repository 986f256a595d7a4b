#!/bin/bash
# Submits the array, then the assembly (and a verification spread the same way) once every task
# has succeeded.
set -euo pipefail
: "${BASE:?set BASE}" "${ADAPTER:?set ADAPTER}" "${OUTPUT:?set OUTPUT}"
export BASE ADAPTER OUTPUT
array=$(sbatch --parsable merge-array.sbatch)
assemble=$(sbatch --parsable --dependency=afterok:"$array" --job-name=lora-assemble \
    --wrap "lora-tool merge --assemble '$OUTPUT'")
sbatch --dependency=afterok:"$assemble" --array=0-7 --job-name=lora-verify \
    --wrap "lora-tool verify --base '$BASE' --adapter '$ADAPTER' --merged '$OUTPUT' --part auto"
