//! A worker thread: pick the most urgent ready key, take a batch, run it,
//! deliver the results, tell the key's controller how it went.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::MutexGuard;
use switchyard_core::{Clock, panic_message};

use crate::batcher::{OutcomeOf, Payload, Shared, State, Waiter, controller_target};
use crate::handler::{Member, Pause, RunningSet};
use crate::metrics::nanos;
use crate::queue::Queued;
use crate::{
    BatchContext, BatchError, BatchHandler, BatchKey, BatchObservation, Priority, ShutdownMode,
    YIELD_POLL,
};

/// A batch taken from the queue, ready to run.
struct Formed<H: BatchHandler> {
    key: BatchKey,
    target: usize,
    queued_after: usize,
    entries: Vec<Queued<Payload<H>>>,
}

/// A worker's loop. The urgent lane (`lane`, one per batcher with a yield
/// gate, outside the worker count) takes only batches at the gate's level,
/// so urgent requests never wait behind a less urgent batch of their own
/// pipeline; the others take whatever the gate allows.
pub(crate) fn run<H: BatchHandler>(shared: &Arc<Shared<H>>, lane: bool) {
    let slot = Arc::new(RunningSet::default());
    let mut state = shared.state.lock();
    state.workers.push(Arc::clone(&slot));
    let mut last_sweep = shared.clock.now();
    loop {
        if !lane && state.live_workers > state.desired_workers {
            break;
        }
        let now = shared.clock.now();
        if state.queue.has_deadlines()
            && now.saturating_duration_since(last_sweep)
                >= shared.config.sweep_interval.min(shared.config.max_wait)
        {
            last_sweep = now;
            let expired = take_expired(&mut state, now);
            if !expired.is_empty() {
                MutexGuard::unlocked(&mut state, || {
                    shared.fail_entries(expired, || Err(BatchError::TimedOut));
                });
                continue;
            }
        }
        if state.queue.is_empty() {
            if state.stopping.is_some() {
                break;
            }
            state.sleeping += 1;
            shared.work.wait(&mut state);
            state.sleeping -= 1;
            continue;
        }
        match choose(shared, &mut state, now, lane) {
            Choice::Run(formed) => {
                let expired = formed.1;
                let formed = formed.0;
                drop(state);
                shared.fail_entries(expired, || Err(BatchError::TimedOut));
                let (key, observation) = execute(shared, &slot, formed);
                state = shared.state.lock();
                let State {
                    controllers,
                    factory,
                    ..
                } = &mut *state;
                controller_target(controllers, factory, &key);
                if let Some(c) = controllers.get_mut(&key) {
                    c.observe(&observation);
                }
            }
            Choice::WaitUntil(until) => wait_until(shared, &mut state, until),
            Choice::Sleep => {
                // Nothing at the level: sleep until a submission or the
                // shutdown wakes every worker.
                state.sleeping += 1;
                shared.work.wait(&mut state);
                state.sleeping -= 1;
            }
        }
    }
    if !lane {
        state.live_workers -= 1;
    }
    state.workers.retain(|w| !Arc::ptr_eq(w, &slot));
    shared.work.notify_all();
}

enum Choice<H: BatchHandler> {
    Run((Formed<H>, Vec<Queued<Payload<H>>>)),
    WaitUntil(Instant),
    /// The lane found nothing it may take.
    Sleep,
}

fn take_expired<H: BatchHandler>(state: &mut State<H>, now: Instant) -> Vec<Queued<Payload<H>>> {
    let expired = state.queue.take_expired(now);
    for entry in &expired {
        // The key is not kept on entries; sweep the index by position.
        let pos = entry.position();
        state.coalesce_index.retain(|_, p| *p != pos);
    }
    expired
}

/// The most urgent key whose batch is ready (full, over its cost budget, or
/// its oldest request has waited `max_wait`), or when to look again.
fn choose<H: BatchHandler>(
    shared: &Shared<H>,
    state: &mut State<H>,
    now: Instant,
    lane: bool,
) -> Choice<H> {
    let config = &shared.config;
    let draining = state.stopping == Some(ShutdownMode::Drain);
    let State {
        queue,
        controllers,
        factory,
        ..
    } = state;
    let mut earliest: Option<Instant> = None;
    // One reading of the gate for the whole choice: what it holds stays
    // queued, in every key.
    let floor = match config.yield_gate.as_deref() {
        Some(gate) if lane => gate.level(),
        Some(gate) => gate.floor(),
        None => Priority::Low,
    };
    let best = queue
        .best_key(now, |key, summary| {
            if summary.best_rank > floor.rank() {
                // Held work: look again soon. The lane never takes it, and
                // a submission at the level wakes it.
                if !lane {
                    let poll = now + YIELD_POLL;
                    earliest = Some(earliest.map_or(poll, |e| e.min(poll)));
                }
                return false;
            }
            let fill_by = summary.oldest + config.max_wait;
            let ready = draining
                || now >= fill_by
                || summary.cost >= config.max_batch_cost
                || summary.len >= controller_target(controllers, factory, key);
            if !ready {
                earliest = Some(earliest.map_or(fill_by, |e| e.min(fill_by)));
            }
            ready
        })
        .map(|(key, _)| key.clone());
    let Some(key) = best else {
        return match earliest {
            Some(at) => Choice::WaitUntil(at),
            None if lane && state.stopping.is_none() => Choice::Sleep,
            None => Choice::WaitUntil(now + config.max_wait),
        };
    };
    let target = state.target(&key);
    let taken = state
        .queue
        .take_batch_above(&key, target, config.max_batch_cost, now, floor);
    for entry in taken.batch.iter().chain(&taken.expired) {
        state.unindex(&key, entry);
    }
    let queued_after = state.queue.key_load(&key).0;
    Choice::Run((
        Formed {
            key,
            target,
            queued_after,
            entries: taken.batch,
        },
        taken.expired,
    ))
}

/// Sleep until `until` on the batcher's clock, or until woken. The last
/// `spin` of the wait yields instead of sleeping, to dodge timer slack.
fn wait_until<H: BatchHandler>(
    shared: &Shared<H>,
    state: &mut MutexGuard<'_, State<H>>,
    until: Instant,
) {
    let now = shared.clock.now();
    let mut left = until.saturating_duration_since(now);
    if state.queue.has_deadlines() {
        left = left.min(shared.config.sweep_interval);
    }
    let spin = shared.config.spin;
    if left > spin {
        // Under load the batch fills within microseconds: watch the arrival
        // counter for a moment before paying for a futex sleep and wake.
        if !spin.is_zero() && spin_for_ready(shared, state, spin) {
            return;
        }
        state.sleeping += 1;
        let _ = shared.work.wait_for(state, left - spin);
        state.sleeping -= 1;
    } else {
        MutexGuard::unlocked(state, std::thread::yield_now);
    }
}

/// Spin (unlocked) up to `spin` until a submit reports a ready batch;
/// whether one did. The flag is written once per batch, so spinning on it
/// costs the submitting threads nothing.
fn spin_for_ready<H: BatchHandler>(
    shared: &Shared<H>,
    state: &mut MutexGuard<'_, State<H>>,
    spin: std::time::Duration,
) -> bool {
    use std::sync::atomic::Ordering;
    state.spinning += 1;
    shared.batch_ready.store(false, Ordering::Relaxed);
    let ready = MutexGuard::unlocked(state, || {
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            if shared.batch_ready.load(Ordering::Acquire) {
                return true;
            }
            polls += 1;
            if polls.is_multiple_of(64) && start.elapsed() >= spin {
                return false;
            }
            std::hint::spin_loop();
        }
    });
    state.spinning -= 1;
    // A submit may have filled the batch after the last poll but before the
    // lock was retaken; it set the flag (under the lock) rather than notifying.
    ready || shared.batch_ready.load(Ordering::Acquire)
}

/// The inputs whose results say they ran out of memory run once more,
/// after the batcher's out-of-memory hook, in two halves (alone if only one
/// failed); their new results replace the old. A second failure stands.
/// Run the handler over a batch whose most urgent request is `top`: on the
/// batcher's background threads when its gate may hold `top`, else here.
fn run_handler<H: BatchHandler>(
    shared: &Shared<H>,
    top: Priority,
    inputs: &mut [H::Input],
    context: &BatchContext<'_>,
) -> Vec<Result<H::Output, H::Error>> {
    let gate = shared.config.yield_gate.as_deref();
    match &shared.background {
        Some(pool) if gate.is_some_and(|g| g.backgrounds(top)) => {
            pool.run(|| shared.handler.run(inputs, context))
        }
        _ => shared.handler.run(inputs, context),
    }
}

fn retry_out_of_memory<H: BatchHandler>(
    shared: &Shared<H>,
    top: Priority,
    running: &RunningSet,
    key: &BatchKey,
    members: &[Member<'_>],
    inputs: &mut Vec<H::Input>,
    results: &mut [Result<H::Output, H::Error>],
) {
    let failed: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.as_ref()
                .is_err_and(|e| shared.handler.is_out_of_memory(e))
        })
        .map(|(i, _)| i)
        .collect();
    if failed.is_empty() {
        return;
    }
    shared.metrics.lock().memory_retries += 1;
    tracing::warn!(
        model = %key.model(),
        failed = failed.len(),
        size = inputs.len(),
        "batch ran out of memory; retrying smaller"
    );
    if let Some(hook) = &shared.on_out_of_memory {
        // A panicking hook must not take the worker down.
        let _ = catch_unwind(AssertUnwindSafe(|| hook()));
    }
    let mut taken: Vec<Option<H::Input>> = std::mem::take(inputs).into_iter().map(Some).collect();
    let half = failed.len().div_ceil(2);
    for part in failed.chunks(half) {
        let mut batch: Vec<H::Input> = part.iter().filter_map(|&i| taken[i].take()).collect();
        let sub: Vec<Member<'_>> = part
            .iter()
            .map(|&i| Member {
                id: members[i].id,
                cancel: members[i].cancel,
            })
            .collect();
        let context = BatchContext {
            key,
            members: &sub,
            running: Some(running),
            pause: None,
        };
        let again = catch_unwind(AssertUnwindSafe(|| {
            run_handler(shared, top, &mut batch, &context)
        }));
        if let Ok(again) = again
            && again.len() == part.len()
        {
            for (&i, r) in part.iter().zip(again) {
                results[i] = r;
            }
        }
        // Back in place, so the inputs drop with the batch as before.
        for (&i, input) in part.iter().zip(batch) {
            taken[i] = Some(input);
        }
    }
    inputs.extend(taken.into_iter().flatten());
}

fn execute<H: BatchHandler>(
    shared: &Shared<H>,
    slot: &RunningSet,
    formed: Formed<H>,
) -> (BatchKey, BatchObservation) {
    let Formed {
        key,
        target,
        queued_after,
        entries,
    } = formed;
    let started = shared.clock.now();
    let mut inputs = Vec::with_capacity(entries.len());
    let mut groups: Vec<(Waiter<H>, Vec<Waiter<H>>)> = Vec::with_capacity(entries.len());
    let mut late = Vec::new();
    let mut cost = 0u64;
    let top = entries
        .iter()
        .map(|e| e.priority)
        .max()
        .unwrap_or(Priority::Low);
    for entry in entries {
        cost = cost.saturating_add(entry.cost);
        let Payload {
            input,
            first,
            followers,
        } = entry.payload;
        inputs.push(input);
        groups.push((first, followers));
    }
    // Coalesced followers keep their own deadlines: those already past fail now.
    for (_, followers) in &mut groups {
        if !followers.is_empty() {
            let (live, expired): (Vec<_>, Vec<_>) = std::mem::take(followers)
                .into_iter()
                .partition(|w| w.deadline.is_none_or(|d| started < d.instant()));
            *followers = live;
            late.extend(expired);
        }
    }
    for w in &late {
        w.cell.complete(Err(BatchError::TimedOut));
    }
    slot.start(
        groups
            .iter()
            .flat_map(|(f, rest)| std::iter::once(f.id).chain(rest.iter().map(|w| w.id))),
    );
    let members: Vec<Member<'_>> = groups
        .iter()
        .map(|(first, _)| Member {
            id: first.id,
            cancel: &*first.cell,
        })
        .collect();
    let context = BatchContext {
        key: &key,
        members: &members,
        running: Some(slot),
        pause: shared.config.yield_gate.as_deref().map(|gate| Pause {
            gate,
            source: shared.yield_source,
            priority: top,
        }),
    };
    let span = tracing::debug_span!(
        "batch",
        model = %key.model(),
        size = inputs.len(),
        cost,
    );
    let mut outcome = catch_unwind(AssertUnwindSafe(|| {
        span.in_scope(|| run_handler(shared, top, &mut inputs, &context))
    }));
    if let Ok(results) = &mut outcome
        && results.len() == inputs.len()
    {
        span.in_scope(|| {
            retry_out_of_memory(shared, top, slot, &key, &members, &mut inputs, results)
        });
    }
    drop(members);
    let finished = shared.clock.now();
    slot.finish();
    drop(inputs);

    let size = groups.len();
    let all = || {
        groups
            .iter()
            .flat_map(|(f, rest)| std::iter::once(f).chain(rest))
    };
    let mut outcomes: Vec<(&Waiter<H>, OutcomeOf<H>)> = Vec::with_capacity(size);
    let (mut panicked, mut miscounted) = (false, false);
    match outcome {
        Ok(results) if results.len() == size => {
            for ((first, followers), result) in groups.iter().zip(results) {
                let result = result.map_err(BatchError::Handler);
                if let Some(clone) = shared.cloner {
                    outcomes.extend(followers.iter().map(|w| (w, clone(&result))));
                }
                outcomes.push((first, result));
            }
        }
        Ok(results) => {
            miscounted = true;
            let got = results.len();
            outcomes.extend(all().map(|w| {
                (
                    w,
                    Err(BatchError::ResultCount {
                        expected: size,
                        got,
                    }),
                )
            }));
        }
        Err(payload) => {
            panicked = true;
            let message = panic_message(&*payload);
            outcomes.extend(all().map(|w| {
                let error = BatchError::HandlerPanicked {
                    message: message.clone(),
                };
                (w, Err(error))
            }));
        }
    }
    let succeeded = outcomes.iter().filter(|(_, o)| o.is_ok()).count() as u64;
    let latency = finished.saturating_duration_since(started);
    // Count before delivering, so a caller that sees its result also sees it counted.
    {
        let mut m = shared.metrics.lock();
        m.batches += 1;
        m.succeeded += succeeded;
        m.failed += outcomes.len() as u64 - succeeded;
        m.timed_out += late.len() as u64;
        m.panics += u64::from(panicked);
        m.miscounted += u64::from(miscounted);
        m.batch_size.record(size as u64);
        m.batch_latency.record(nanos(latency));
        for w in all() {
            m.queue_wait
                .record(nanos(started.saturating_duration_since(w.enqueued_at)));
            m.end_to_end
                .record(nanos(finished.saturating_duration_since(w.enqueued_at)));
        }
    }
    for (waiter, outcome) in outcomes {
        waiter.cell.complete(outcome);
    }
    let observation = BatchObservation {
        size,
        cost,
        latency,
        target,
        queued_after,
    };
    (key, observation)
}
