"""``vmopt simulate``: configuration, the trace-driven driver, the report, plots and sweeps."""

from vmopt.sim.config import SimConfig, load_config
from vmopt.sim.driver import SimResult, Simulator

__all__ = ["SimConfig", "SimResult", "Simulator", "load_config"]
