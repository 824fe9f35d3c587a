#!/usr/bin/env bash
# vLLM 0.26 onto the GPU host in parts that fit one device call each: the carry plus the tracked
# tree (~22 MiB in session 7) must stay under 64 MiB, and ../shared/scripts/vllm-offline.sh's part a
# (59 MiB) and c (49 MiB) no longer do. Here (once, after `MOE=1 vllm-offline.sh .vllm`):
#   bash tuner/benchmarks/vllm_stage.sh split     .vllm/a -> a1, a2 (byte halves of vllm.tar.xz),
#                                                 .vllm/c -> c1, c2 (its wheels, <= 23 MiB in c1)
# On the host, back to back while the machine stays warm (session 7: four calls, ~85 s held):
#   carry [.vllm/a1]                        bash tuner/benchmarks/vllm_stage.sh a1
#   carry [.vllm/a2]                        bash tuner/benchmarks/vllm_stage.sh a2
#   carry [.vllm/b]                         bash tuner/benchmarks/vllm_stage.sh b
#   carry [.vllm/c2]                        bash tuner/benchmarks/vllm_stage.sh c2
#   (b and c2 in one call passed 64 MiB in session 14 with the tracked tree at ~29 MiB)
#   carry [.vllm/c1, .whl, .snap]           bash tuner/benchmarks/vllm_stage.sh c1 && bash tuner/benchmarks/vllm_h200.sh setup
#   (session 13: a2 with .whl and .snap came to 70 MB with the tracked tree's 30, over the 64 MiB;
#   c1's 24 MB leaves room for them. FlagScale: its .fs in a call of its own, then vllm_h200.sh fs)
#   (issue 16) carry [.vllm/moe1], then [.vllm/moe2]: vllm_stage.sh moe1, then moe2 (.vllm/moe's 39 MiB
#   with the tracked tree passed 64 MiB in session 11; `vllm_stage.sh split` halves it too)
# a1 is parked in /tmp/parts until a2 joins it; everything lands in /tmp/vsite (PYTHONPATH).
set -euo pipefail
P=${VLLM_PARTS:-.vllm}
[ $# -gt 0 ] || { echo "usage: vllm_stage.sh split | a1|a2|b|c1|c2|moe|moe1|moe2 ..." >&2; exit 2; }
unpack() { python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall('/tmp/vsite')" "$1"; }
# halve SRC NAME: SRC's byte halves into $P/<NAME>1 and $P/<NAME>2, named as SRC (<file>.part00, .part01)
halve() {
  local f; f=$(basename "$1")
  rm -rf "$P/${2}1" "$P/${2}2" && mkdir -p "$P/${2}1" "$P/${2}2"
  split -b $(( ($(stat -c %s "$1") + 1) / 2 )) -d "$1" "$P/${2}1/$f.part"
  mv "$P/${2}1/$f.part01" "$P/${2}2/"
}
# join NAME FILE: <NAME>2's half beside <NAME>1's (parked in /tmp/parts by an earlier call), FILE unpacked
join() {
  cp "$P/${1}2/$2.part"* /tmp/parts/
  [ -f "/tmp/parts/$2.part00" ] || { echo "${1}1 is not here: stage ${1}1 first, on this warm machine" >&2; exit 1; }
  cat "/tmp/parts/$2.part"* > "/tmp/parts/$2" && unpack "/tmp/parts/$2"
  rm -f "/tmp/parts/$2"*
}
for part in "$@"; do
  mkdir -p /tmp/vsite /tmp/parts
  case "$part" in
    split)
      [ -f "$P/a/vllm.tar.xz" ] && [ -d "$P/c" ] || { echo "no $P/a/vllm.tar.xz or $P/c: run vllm-offline.sh $P first" >&2; exit 1; }
      rm -rf "$P"/c1 "$P"/c2 && mkdir -p "$P"/c1 "$P"/c2
      mapfile -t wheels < <(ls -S "$P"/c/*.whl 2>/dev/null)
      [ ${#wheels[@]} -gt 0 ] && [ -s "$P/a/vllm.tar.xz" ] || { echo "no wheels in $P/c or an empty $P/a: run vllm-offline.sh $P again" >&2; exit 1; }
      halve "$P/a/vllm.tar.xz" a
      size=0  # the largest wheels first into c1 while they fit 23 MiB, the rest into c2
      for w in "${wheels[@]}"; do
        s=$(stat -c %s "$w")
        if [ $(( size + s )) -le $(( 23 * 1024 * 1024 )) ]; then cp "$w" "$P/c1/"; size=$(( size + s )); else cp "$w" "$P/c2/"; fi
      done
      [ ! -f "$P/moe/moe.tar.xz" ] || halve "$P/moe/moe.tar.xz" moe  # vLLM's MoE ops (issue 16)
      du -sh "$P"/a1 "$P"/a2 "$P"/c1 "$P"/c2 "$P"/moe1 "$P"/moe2 2>/dev/null || true ;;  # (no moe: none)
    a1|moe1) cp "$P/$part/"*.part* /tmp/parts/ ;;
    a2) join a vllm.tar.xz ;;
    b) unpack "$P/b/fa3.tar.xz" ;;
    moe) unpack "$P/moe/moe.tar.xz" ;;
    moe2) join moe moe.tar.xz ;;
    c1|c2) python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vsite "$P/$part"/*.whl ;;
    *) echo "usage: vllm_stage.sh split | a1|a2|b|c1|c2|moe|moe1|moe2 ..." >&2; exit 2 ;;
  esac
  [ "$part" = split ] || echo "staged $part: $(du -sh /tmp/vsite | cut -f1) in /tmp/vsite"
done
