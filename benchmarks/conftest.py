import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # sibling modules (fused_op_bench, bench_<op>, ...)
