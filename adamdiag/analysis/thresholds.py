"""Every number that decides a verdict, a blowup or an outcome, with its reason.

scan (the diagnosis), replay (outcomes) and the live monitor read their thresholds from here, so
one change moves all three together. The rule and evidence modules (``diagnose``, ``evidence``,
``verdicts``, ``findings``, ``recommend``) hold no other numeric literal than 0, 1 and 2 — a test
parses them and fails on any other. Values are relative (ratios, fractions of v's memory, robust
z-scores), never levels of a raw series, so they hold for a loss of 1e-6 and one of 1e3.
"""

from __future__ import annotations

# --- the loss curve ----------------------------------------------------------------------------
# Onset of an excursion: the loss at least doubled against its own recent robust level; ordinary
# noise of a training loss is a few percent to tens of percent of its level.
BLOWUP_FACTOR = 2.0
# A *blowup* (not a spike) reaches a decade above that level within BLOWUP_HORIZON steps and stays
# above the onset level for BLOWUP_PERSIST steps. Smaller or shorter excursions are spikes: worth a
# warning, not a verdict — a run that shrugs off a 3x blip did not blow up.
BLOWUP_PEAK_FACTOR = 10.0
BLOWUP_HORIZON = 100
BLOWUP_PERSIST = 10
# The loss's "normal" level is its median over about this many steps before a point (signals._window): long
# enough for a stable median at one point per step, short enough to follow a loss that keeps falling.
TRAILING_STEPS = 100
# A sparse log follows its loss's fall (signals._LossLevels) only where the loss falls from one point to the next by
# more than this many of its own noise sigmas around that fall: a fall that plain, not a noisy loss whose trailing
# median of differences dips below its noise by chance (~4% of the points of a flat loss at one sigma, 0.02% at two).
SPARSE_FALL_Z = 2.0
# Robust z-scores (in MAD-sigmas of log-loss) that a jump must also exceed, so a very noisy loss
# whose typical swings are already 2x does not count every swing: 3 for the onset of a blowup
# (which must then also reach a decade), 6 for a spike worth a warning on its own.
ONSET_Z = 3.0
SPIKE_Z = 6.0
# Floor for the robust scale of log-loss: 1% relative change. A perfectly smooth full-batch loss
# has a MAD near zero, which would make every wiggle "infinitely significant".
MIN_LOG_SCALE = 0.01
# Fewer loss points than this say nothing about a trend (the detector's trailing window needs them).
MIN_LOSS_POINTS = 8
# A blowup needs this many finite points before its rise: with fewer, the "level before" is one or
# two values (a near-zero first point of an eval curve became the baseline of a false AD001).
MIN_BASELINE_POINTS = 5
# A run that ends worse than it started: the level held over its last END_LEVEL_FRACTION of points (at
# least LEVEL_POINTS) is ≥ BLOWUP_FACTOR x the level of its first LEVEL_POINTS. Training lowers a loss from its
# start (the untrained model's loss is its worst), so a loss that ends doubled above it diverged, whether or not
# any stretch reached the 10x of a blowup (a warm-up to an lr too high, logged every 10 steps: 8-9.8x held, ends
# 5x above its start). A median over points, so one high last batch does not count.
LEVEL_POINTS = 3
END_LEVEL_FRACTION = 0.1
# Optimizer checkpoints before the loss event needed for them to count as mechanism data without a
# logged trajectory: a pair is the least that shows how v moved (r over the interval between them); one
# checkpoint, or any taken after the blowup, says nothing about what led to it.
MIN_CHECKPOINTS_BEFORE_EVENT = 2

# --- second moment: collapse, re-growth, update size --------------------------------------------
# r = g²/v̂ is 1 in steady state and 0 under pure decay (v_{t+1} = β2·v_t). Below 0.1, at least
# 90% of v's per-step change is decay: v lives on the memory of old gradients. Ordinary early
# training, where v̂ still averages the large first gradients, sits around 0.2-0.5.
COLLAPSE_R = 0.1
# The collapse must hold for a good part of v's memory (1/(1-β2) steps) before it matters: a few
# quiet steps decay v by a negligible factor. 0.2/(1-β2) steps (200 at β2=0.999) shrink v by ≥ 18%
# in pure decay, and are far longer than the quiet transients of early training, where v̂ still
# averages the first large gradients for ~100 steps. Before 1/(1-β2) steps the bias-corrected v̂ is the
# plain mean of all g² so far: its memory is the step count, and so is the span's base
# (evidence.collapse_span). Measured on the validation matrix: with the long-run memory only, runs that
# blow up early with β2 0.9999 (v̂ still the mean of the first large gradients; eps 1e-2 avoids the
# blowup, lr/3 and lr/10 only postpone it) were called lr_too_high.
COLLAPSE_MIN_MEMORY_FRACTION = 0.2
# Fewest logged points a stretch may have, whatever the logging interval (one point is no stretch).
COLLAPSE_MIN_POINTS = 3
# Depth: v̂ at most 1% of its peak so far, i.e. √v̂ (the denominator of the update) fell ≥ 10x —
# the per-element step lr/(√v̂+eps) for the same gradient is ≥ 10x what it was. A quiet stretch
# that is long but not this deep is still a stale v (the adaptive edge of stability: lowering lr
# only postpones the blowup, measured on the validation matrix), reported with medium confidence.
COLLAPSE_DEPTH = 0.01
# Spike cycles (evidence.spike_cycles): the adaptive edge of stability at a constant or falling lr — v decays
# until lr/√v̂ passes the loss's stability limit, the loss spikes and recovers, the spike's gradients lift v,
# and v decays again. Each quiet stretch between spikes is short, but over v's memory before the blowup most
# steps are quiet (r < COLLAPSE_R) and the run spiked and recovered at least SPIKE_CYCLE_MIN_SPIKES times:
# v, not the lr, is what keeps crossing the limit (eps caps lr/√v̂; a smaller lr moves the limit, not the cycle).
SPIKE_CYCLE_QUIET_SHARE = 0.5
SPIKE_CYCLE_MIN_SPIKES = 2
# The logged lr "rose" over that window when its value at the event is this much (relative) above its least
# there: a warm-up or a warm restart, not the float noise of a logged constant.
SPIKE_CYCLE_LR_RISE = 0.2
# The same depth per element (evidence.element_fall): a v collapse when at least this share of all live
# elements sits ≥ 1/√COLLAPSE_DEPTH (10x) below its tensor's earlier median √v̂ — the typical element's step
# grew ≥ 10x, though the tensor means, kept up by an active part, did not fall.
ELEMENT_FALL_MOST = 0.5
# Re-growth: the current g² is 10x what v̂ expects; m (β1=0.9) reacts within ~10 steps, v within
# ~1000, so the update m̂/√v̂ grows by up to ~√10 and more.
REGROWTH_R = 10.0
# Steps before the event in which re-growth and update RMS are searched, and the slack by which a
# quiet stretch may end before the event and still explain it (the instability grows for a few
# dozen steps before the loss shows it).
REGROWTH_WINDOW = 50
# Wortsman et al. 2023: update RMS > 1 precedes loss spikes by 1-8 steps.
UPDATE_RMS_LIMIT = 1.0
# The "before the event" window for the median r quoted in an lr_too_high finding: ~5 re-growth
# windows, long enough for a stable median, short enough to describe the state just before.
PRE_EVENT_WINDOW = 250
# lr_too_high: the first step where g²/v̂ exceeded this (a step the optimizer could not absorb:
# the gradient is √3x what v̂ expects) is the warning step, if it came at most
# INSTABILITY_MAX_LEAD steps before the blowup (older excursions are ordinary noise).
INSTABILITY_R = 3.0
INSTABILITY_MAX_LEAD = 500

# --- one bad batch ------------------------------------------------------------------------------
# The gradient norm jumped ≥10x (g² ≥ 100x, far outside mini-batch noise) in ONE step, over both
# the previous step and the trailing median; in one step the parameters move by ~lr per element,
# which cannot change a smooth loss's gradient 10x — a new batch can.
GRAD_JUMP_FACTOR = 10.0
# No healthy history before this many logged points: a run that diverges right away has too high a
# learning rate, not a bad batch.
GRAD_JUMP_MIN_HISTORY = 20
# Trailing window (points) of the median the jump is compared with.
GRAD_JUMP_TRAILING = 50
# With sparse logging one step is not visible: there the jump must also exceed GRAD_JUMP_FACTOR x
# everything logged after the first 1/20 of the run (the first steps' large gradients excluded).
GRAD_JUMP_SKIP_FRACTION = 20

# --- eps ---------------------------------------------------------------------------------------
# eps dominates an element when √v̂ < eps; when it does for 90% of the elements Adam is, in effect,
# SGD with step lr/eps (eps_too_large, if the loss also barely moved).
EPS_DOMINATED_FRACTION = 0.9
# "Barely moved": the median of the last 10% of the loss is above half the median of the first 10%.
EPS_PROGRESS_SEGMENTS = 10
EPS_STALLED_PROGRESS = 0.5
# eps bounds the step once √v̂ ≤ 10·eps: the step lr·m̂/(√v̂+eps) can grow at most ~10x more.
EPS_BOUND_FACTOR = 10.0
# An element is "near eps" when √v̂ < 10·eps; a tensor takes part in a collapse for the eps
# recommendation when more than 1% of its (live) elements are.
NEAR_EPS_FRACTION = 0.01
# The recommended eps is the smallest candidate that dominates at least half of the collapsed elements.
EPS_BOUNDS_MOST = 0.5
# "Dominates" = √v̂ ≤ eps/3 (half a decade), counted over the collapsed tensors' live elements (not
# averaged per tensor: a 1-element bias must not outvote a 4096-element weight). An eps only just above
# √v̂ leaves the denominator √v̂+eps moving with v: the step lr·m̂/(√v̂+eps) still grows as v keeps
# decaying and the loss sharpens, and the instability returns later (a postponement). With √v̂ ≤ eps/3
# the denominator stays within 33% of eps whatever v does next. Chosen on the counterfactual labels of
# seed groups 0-30 (scan of the cached runs, recommended eps → the labeller's eps1e-3/eps1e-2 outcome):
# margin 1 (√v̂ < eps) avoided the blowup on 84/97 v_collapse-labelled runs, margin 3 on 94/97 (the 3
# misses: runs whose own log looks healthy, no recommendation), margin 10 also 94/97 but with eps 1e-2
# or 0.1 where 1e-3 sufficed. Scored afterwards on seed group 60 (bench/results/accuracy_seeds60.json).
EPS_DOMINATION_MARGIN = 3.0
# The derived candidate is searched from 1e-8 (torch's default eps) upwards.
EPS_SEARCH_LOWEST_DECADE = -8

# --- recommendations and verification -------------------------------------------------------
DEFAULT_BETA2 = 0.999
DEFAULT_EPS = 1e-8
# Keras' Adam (tf.keras and Keras 3: keras.optimizers.Adam(epsilon=1e-7)); its β2 default is torch's 0.999.
KERAS_DEFAULT_EPS = 1e-7
# eps candidates for a v collapse (the usual fixes of the mechanism), plus one sized from the
# measured √v̂ when a checkpoint before the blowup has it.
REPORT_EPS_CANDIDATES = (1e-3, 1e-2, 1e-1)
# Without a checkpoint before the blowup √v̂ cannot be measured (a logged gradient norm gives g² per
# element only when the element count is known): the middle of the usual range, not its bottom. 1e-3
# dominates only collapsed elements with √v̂ ≤ 1e-4, and collapsed √v̂ of 1e-4..1e-3 are common (in the
# matrix's checkpoints the collapsed tensors' median √v̂ was 4e-5..9e-4 at the replay start).
EPS_UNSIZED = 1e-2
# lr_too_high: the recommendation is a decade (LR_REDUCTION_STRONG). Adam trains at the adaptive edge
# of stability: the loss sharpens until the preconditioned sharpness meets ~2(1+β1)/((1-β1)·lr), so a
# half-decade cut (LR_REDUCTION) buys room that progressive sharpening uses up, and the blowup comes
# back (issue #12's first run: lr/3 blew up again ~1550 steps later). On the counterfactual labels of
# seed groups 0-40 lr/3 avoided none of the 15 lr_too_high runs and lr/10 all of them. lr/3 is still
# replayed, so the table shows which cut holds.
LR_REDUCTION = 3.0
LR_REDUCTION_STRONG = 10.0
# Replayed variants whose changes span a decade (or change eps and lr alike) blowing up at one step together,
# later than the original: a data or objective event there, not the optimizer (replay.result.common_blowup).
DATA_EVENT_SPREAD = 10.0
# A warm-up still under way at the blowup: the logged lr rising this much after it makes the replay also try
# the cut that keeps the schedule's peak at a tenth of the lr that blew up (recommend.schedule_rise).
SCHEDULE_RISE = 1.5
# The logged lr at the blowup this many times the start checkpoint's (a warm restart, a steep warm-up): the
# checkpoint's lr/10 is no number a user would set, so the lr advice also quotes the cut at the blowup.
LR_RISE_SINCE_START = 10.0
# Clipping the log does not show: mean(v) propagated exactly from one checkpoint over every logged step's
# norm lands this far above the next checkpoint's own on every such interval (clipping at c scales g² by
# (c/norm)² on the clipped steps; float rounding and a frozen parameter's share stay well under 1.5x) ...
CLIP_MISMATCH = 1.5
# ... and the intervals agree on the clip that reproduces them within this (relative).
CLIP_AGREEMENT = 0.2
# ... found to this relative precision (the reported clip keeps three digits).
CLIP_RESOLUTION = 1e-6
# A recovered spike's level (evidence.unresolved_spike) from this many points before it at least: a sparse log's early
# spikes have only a few (Lightning's default every 50: a blowup at step 124 is its third point).
SPIKE_LEVEL_MIN_POINTS = 2
# A log on the grid N-1, 2N-1, ... (Lightning's every-N steps) is read as 0-based (evidence.logged_zero_based) from
# this many points on the grid (two points a prime distance apart sit on a grid of that spacing one time in it).
EVERY_N_MIN_POINTS = 3
# eps_too_large: two decades down puts eps well under a typical √v̂ again.
EPS_DECREASE = 100.0

# A derived eps candidate is the power of ten just above the measured median √v̂.
DECADE = 10.0
# Smallest positive value a logarithm is taken of (a numeric guard, not a threshold).
TINY = 1e-300

# --- presentation limits (how many items a finding lists; never decide a verdict) --------------
MAX_SPIKES_LISTED = 5
MAX_REGROWTH_LISTED = 5
MAX_RMS_LISTED = 3
MAX_NAMES_SHOWN = 3
MAX_EVIDENCE_ITEMS = 20
MAX_TAGS_SHOWN = 12
MAX_TAGS_EVIDENCE = 50

# --- replay outcomes (adamdiag replay, scan --verify) -------------------------------------------
# A variant that did not blow up within the horizon is `at_risk` (the blowup may only be postponed:
# the adaptive edge of stability) when, over the last OUTCOME_WINDOW steps, v is still collapsing:
# r = mean g² / mean v̂_{t-1} below COLLAPSE_R (the collapse rule's own threshold, so replay and scan
# call the same state collapsed) while median √v̂ is still above OUTCOME_EPS_FACTOR·eps and falling:
# eps does not bound the step yet, and every further step of decay makes lr/(√v̂+eps) larger.
# The window: OUTCOME_WINDOW_MEMORY_FRACTION of v's memory 1/(1-β2) -- in pure decay √v̂ falls by
# β2^(0.1/(1-β2)) ≈ e^-0.1 ≈ 10% over it, enough to see "falling" above rounding; with at least
# OUTCOME_WINDOW_MIN_STEPS steps so a short-memory β2 (0.9: 2 steps) is not judged on batch noise.
OUTCOME_WINDOW_MIN_STEPS = 50
OUTCOME_WINDOW_MEMORY_FRACTION = 0.2
OUTCOME_EPS_FACTOR = 10.0
# Median √v̂ is exact up to this many elements per scope; above, it is the median of an evenly
# strided sample of this many elements (both engines take the same elements): the sample median's
# rank error is ~1/(2√n) ≈ 0.2% in quantile -- nothing next to a 10x eps margin -- and its cost per
# step stays O(sample) instead of a sort of every element of the model.
OUTCOME_MEDIAN_SAMPLE = 1 << 16
# Default horizon: past the logged blowup by v's memory (HORIZON_MEMORIES/(1-β2) steps -- time for a
# postponed instability to come back once v has decayed again), and at least HORIZON_GAP_FACTOR x the
# checkpoint->blowup gap (a variant that only slows the collapse down needs about that much longer).
# In issue 12's runs lr/3 came back 165-2200 steps after the logged blowup (β2 0.98-0.9999): not
# always inside this horizon, which is why a variant that did not blow up is also judged by the
# at_risk rule above rather than called avoided for surviving the horizon.
HORIZON_MEMORIES = 1.0
HORIZON_GAP_FACTOR = 2.0
# ... and, when the run's lr schedule rises after the logged blowup (a warm-up still under way), past the
# end of that rise by v's memory again: a variant that survived only a lower lr than the run goes on to has
# not shown it avoids the blowup (eps 1e-2 on a warm-up to lr 0.3 blew up 33 steps after the plain
# horizon). At most this many times the plain horizon (the replay's cost).
HORIZON_SCHEDULE_MAX_FACTOR = 4.0

# --- replay fidelity (does the original settings' replay reproduce the log?) ---------------------
# Tracking: over the first TRACK_FRACTION of the way from the checkpoint to the logged blowup the
# replayed loss must match the log to FIDELITY_MAX_REL_DEV relative: float32 replays on the same kind
# of device agree to ~1e-6 (bit for bit on the same machine), a wrong data order, model or loss is off
# by 0.3-1 from the first steps. Not further: the instability amplifies rounding differences
# exponentially (the sample perturbed by 1e-7 deviates by 2e-3 at 3/4 of the way, 0.5 just before).
FIDELITY_MAX_REL_DEV = 1e-3
# The all-parameter trajectory reconstructed from a gradient norm logged every step stands in for the
# live monitor's sparser one when the two agree at every step both have, r and v̂ (relative to its
# value at their first common step) to this: the same float32 norms give ~1e-5; a clip the writer did
# not log or a norm taken before loss scaling is off by far more.
MONITOR_LOG_AGREEMENT = 1e-3
TRACK_FRACTION = 0.5
# The replayed blowup may land this fraction of the checkpoint->blowup gap from the logged one (at
# least the logging interval): the rounding-amplified timing shift (2 steps of 63 on the sample). A
# variant blowing up later than the original by less than this (or BLOWUP_PERSIST) is the same blowup,
# not a postponement.
SPIKE_STEP_TOLERANCE_FRACTION = 0.1
# A replayed curve is judged on the last REPLAY_PREFIX_POINTS logged points before the checkpoint plus
# the replayed losses, not on the whole log: the detector runs every few steps during a replay (to stop
# a blown-up variant), and on a 10^6-step log each run costs seconds. 5000 points keep the detector's
# trailing window what it is on the full log (it saturates at n/50 >= 100 points); only a "slow climb"
# measured against a best level older than that can differ. The logged blowup uses the whole log.
REPLAY_PREFIX_POINTS = 5000

# Checkpoints off the log (findings.checkpoints_off_the_log, AD901): when the earliest checkpoint's step exceeds the
# log's last step this many times over, or the log's first step exceeds the last checkpoint's, the two count
# different things (epochs, samples or tokens against optimizer steps) or do not belong together.
CHECKPOINTS_PAST_LOG_FACTOR = 2.0
