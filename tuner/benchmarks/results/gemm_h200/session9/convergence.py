"""Per study of a tuner database: trials measured, the trial by which the best so far came within
1% and 5% of the final best, and the best of the first 20 over the final best. Read on the CPU host
(session 10) from gemm.db (xz -dc gemm.db.xz > gemm.db): usage python3 convergence.py gemm.db"""
import sys
import sqlite3
db = sqlite3.connect(sys.argv[1] if len(sys.argv) > 1 else "gemm.db")
for sid, name in db.execute("select study_id, study_name from studies"):
    vals = [v for (v,) in db.execute("""select v.value from trials t join trial_values v using(trial_id)
      where t.study_id=? and t.state='COMPLETE' order by t.number""", (sid,))]
    if not vals: continue
    best = min(vals)
    first1 = next(i for i, v in enumerate(vals) if v <= best * 1.01) + 1
    first5 = next(i for i, v in enumerate(vals) if v <= best * 1.05) + 1
    run = []; b = 1e18
    for v in vals: b = min(b, v); run.append(b)
    at20 = run[min(19, len(run)-1)] / best
    print(f"{name.split('|')[0]:9} {name.split('|')[1][:28]:28} n={len(vals):2} best@{first1:2} 5%@{first5:2} best20/best={at20:.3f}")
