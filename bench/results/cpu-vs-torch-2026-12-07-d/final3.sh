#!/bin/bash
# Idle final run of this session: the 300-part fit, then 3 rounds against PyTorch.
mkdir -p /work/fit300
date -u
bash /work/fit300.sh  # cpu-vs-torch-2026-12-07-c/fit300.sh > /work/fit300-3.log 2>&1
date -u
bash /work/final2.sh  # cpu-vs-torch-2026-12-07-c/final2.sh > /work/final2-3.log 2>&1
date -u
