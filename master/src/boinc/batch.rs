//! Creating workunits: the submit thread takes queued tasks in batches, stages them, records
//! each workunit's name durably (through the handle sink, as `pending:<wu>`) BEFORE running
//! ONE `bin/create_work --appname APP --wu_template T --result_template R --stdin` per batch
//! from the project root (no shell; every argument and stdin token is validated shell-safe),
//! then records the names as created.
//!
//! Creation is idempotent by name (reference/boinc-server.md §0.3): `create_work` inserts in
//! chunks and stops at the first name the project already has (`Duplicate entry '<name>'`),
//! leaving earlier chunks created. Such a name is taken as already created (its task is
//! re-attached, not failed) and the rest of the batch is submitted again, so a partly
//! successful batch is reconciled name by name: at most one extra `create_work` call per name
//! that already existed (after a crash between `create_work` and the journal, a resumed master
//! re-submits its pending names this way). A duplicate on a later call may be a workunit an
//! earlier call of the same batch created: its input stays staged; only the input of a name
//! that certainly existed before the batch is removed again ([`reconcile`]). Any other failure fails the batch's tasks with the
//! tool's output trimmed to what matters, and cancels whatever of the batch BOINC may have
//! created. With packing, the tasks taken for a batch are first formed into packs (one pack
//! bundle per workunit), and every member of a pack records the pack's workunit name.
//! This module never knows the journal (only the handle sink).

use super::cancel::run_cancel_jobs;
use super::stage::{stage_pack, stage_task, unstage, StagedTask};
use super::{wake_watcher, Pending, Shared, State, Waiting};
use crate::task::{InterfaceError, PreparedTask, TaskId};
use mw_boinc_kit::WuName;
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The handle recorded before `create_work` runs: the workunit may or may not exist.
pub(super) const PENDING_PREFIX: &str = "pending:";
/// Prefix of the handle of a pack member whose pack came back without its result and that
/// waits to be packed again (what follows is the old workunit, for `mw status`): not a
/// workunit to re-attach to.
pub(super) const REQUEUED_PREFIX: &str = "requeued:";
/// The longest the submit thread waits for more tasks to fill a batch (or its packs).
const BATCH_WINDOW: Duration = Duration::from_secs(2);
/// A batch closes once no task has been handed over for this long. Generous: a workunit
/// waits minutes for a volunteer anyway, while a scheduler slowed by a loaded machine hands
/// tasks over tens of milliseconds apart (with 50 ms, bursts of 4 were cut into batches and
/// packs of 1 when tasks came 80 ms apart).
const BATCH_QUIET: Duration = Duration::from_millis(300);
/// Longest create_work error text kept in a task's error.
const MAX_ERROR_TEXT: usize = 600;

pub(super) fn submit_loop(shared: &Arc<Shared>) {
    loop {
        let units: Vec<Unit> = {
            let mut st = shared.lock();
            while (st.queue.is_empty() || (shared.packing && st.sizer.waiting())) && !st.shut_down {
                st = crate::guard::wait(&shared.cond, st);
            }
            if st.shut_down {
                return;
            }
            // Give the scheduler a moment to hand over more tasks for the same batch: until it
            // has stopped handing them over ([`BATCH_QUIET`], at most [`BATCH_WINDOW`]), so
            // batches and packs are full rather than cut by the timing of a drain (a
            // scheduler slowed by a loaded machine hands tasks over tens of ms apart; each
            // batch costs a `create_work` run).
            let full = shared.batch_size.saturating_mul(if shared.packing {
                crate::pack::MAX_TASKS_PER_PACK
            } else {
                1
            });
            let started = std::time::Instant::now();
            // The queue's length when it last changed, and when (other wake-ups of the
            // condition variable do not end the quiet time).
            let mut last = (st.queue.len(), started);
            loop {
                let n = st.queue.len();
                if n != last.0 {
                    last = (n, std::time::Instant::now());
                }
                let quiet_left = BATCH_QUIET.saturating_sub(last.1.elapsed());
                let window_left = BATCH_WINDOW.saturating_sub(started.elapsed());
                if n >= full || st.shut_down || quiet_left.is_zero() || window_left.is_zero() {
                    break;
                }
                st = crate::guard::wait_timeout(&shared.cond, st, quiet_left.min(window_left));
            }
            if st.shut_down {
                // What is queued stays for `mw resume` (shutdown waits only for a batch in
                // hand, see below).
                return;
            }
            let units = if shared.packing {
                form_packs(shared, &mut st)
            } else {
                let n = st.queue.len().min(shared.batch_size);
                st.queue
                    .drain(..n)
                    .map(|p| Unit {
                        // A streaming program's task runs in a pack of one, through it.
                        packed: p.wu.as_ref().map_or(
                            p.task.spec.program.mode() == crate::task::ProgramMode::Stream,
                            WuName::is_pack,
                        ),
                        wu: p.wu.clone(),
                        members: vec![p],
                    })
                    .collect()
            };
            // In hand from now on: shutdown waits for the batch (until its create_work call
            // and deferred cancels are done), and a cancel of one of its tasks is honoured
            // when the batch reaches it (`State::in_hand`).
            if !units.is_empty() {
                st.batches_in_flight += 1;
                for p in units.iter().flat_map(|u| &u.members) {
                    st.in_hand.insert(p.task.id);
                }
            }
            units
        };
        if !units.is_empty() {
            // A panic while submitting one batch fails that batch's tasks; the next batch is
            // submitted as usual.
            let mut progress = BatchProgress::default();
            if let Err(panic) = crate::guard::contain(|| submit_batch(shared, units, &mut progress))
            {
                fail_batch(shared, progress, &panic);
            }
            {
                let mut st = shared.lock();
                st.batches_in_flight = st.batches_in_flight.saturating_sub(1);
                // (A panic dropped the tasks it had not reached: they failed with that.)
                st.in_hand.clear();
                st.cancel_in_hand.clear();
            }
            shared.cond.notify_all();
        }
    }
}

/// What a batch being submitted has done so far that [`fail_batch`] must undo if it panics.
#[derive(Default)]
struct BatchProgress {
    /// Workunits whose tasks wait in `State::waiting` (staged; maybe created; their names
    /// in `creating`).
    wus: Vec<WuName>,
}

/// A panic while submitting a batch (caught): the tasks it staged fail with the panic's
/// message and their workunits are cancelled in BOINC (`create_work` may have created them);
/// tasks it had not staged yet failed as their completions were dropped.
fn fail_batch(shared: &Shared, progress: BatchProgress, panic: &str) {
    let mut failing = Vec::new();
    {
        let mut st = shared.lock();
        for wu in &progress.wus {
            st.creating.remove(wu);
            st.cancelled_wus.insert(wu.clone());
            for task in st.by_wu.remove(wu).unwrap_or_default() {
                if let Some(w) = st.waiting.remove(&task) {
                    if w.packed {
                        st.sizer.job_ended();
                    }
                    st.failed += 1;
                    failing.push(w);
                }
            }
        }
    }
    shared.cond.notify_all();
    log::error!(
        "boinc: internal error while submitting a batch: {panic}; failing its {} task(s)",
        failing.len()
    );
    for wu in &progress.wus {
        super::cancel::mark_cancelled(&shared.spool, wu);
    }
    let how: Vec<(WuName, String)> = progress
        .wus
        .iter()
        .map(|wu| (wu.clone(), run_cancel_jobs(&shared.project, wu)))
        .collect();
    for mut w in failing {
        let cancelled = how
            .iter()
            .find(|(wu, _)| *wu == w.wu)
            .map_or("", |(_, h)| h.as_str());
        if let Some(d) = w.done.take() {
            d.finish(Err(InterfaceError::new(format!(
                "{}: internal error while submitting it to BOINC: {panic}; workunit {}: {cancelled}",
                w.task.id, w.wu
            ))));
        }
    }
}

/// One workunit to create: a lone task, or a pack of tasks.
pub(super) struct Unit {
    /// The name it had (a resumed pending workunit), else a fresh one is given.
    wu: Option<WuName>,
    /// A pack (a pack bundle, a pack name), even of one task.
    packed: bool,
    members: Vec<Pending>,
}

/// Takes queued tasks as packs for at most `batch_size` workunits: the members of a resumed
/// pending pack together under their pack's name, the others per program in queue order, of
/// the sizes the sizer gives (tasks it holds back wait at the front of the queue).
fn form_packs(shared: &Shared, st: &mut State) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::new();
    // Per program (the same `Program`: a pack runs one program bundle).
    let mut fresh: Vec<(*const crate::task::Program, Vec<Pending>)> = Vec::new();
    let mut held = VecDeque::new();
    while let Some(p) = st.queue.pop_front() {
        match &p.wu {
            Some(wu) => match units.iter_mut().find(|u| u.wu.as_ref() == Some(wu)) {
                Some(u) => u.members.push(p),
                None => units.push(Unit {
                    wu: Some(wu.clone()),
                    packed: wu.is_pack(),
                    members: vec![p],
                }),
            },
            None => {
                let program = Arc::as_ptr(&p.task.spec.program);
                match fresh
                    .iter_mut()
                    .find(|(prog, _)| std::ptr::eq(*prog, program))
                {
                    Some((_, g)) => g.push(p),
                    None => fresh.push((program, vec![p])),
                }
            }
        }
    }
    for (_, group) in fresh {
        let mut group = VecDeque::from(group);
        while !group.is_empty() {
            let size = if units.len() < shared.batch_size {
                st.sizer.next_size()
            } else {
                None
            };
            let Some(n) = size else {
                held.extend(group.drain(..));
                break;
            };
            let members: Vec<Pending> = group.drain(..n.min(group.len())).collect();
            units.push(Unit {
                wu: None,
                packed: true,
                members,
            });
        }
    }
    st.queue = held;
    units
}

/// Stages and creates one batch of workunits.
fn submit_batch(shared: &Arc<Shared>, units: Vec<Unit>, progress: &mut BatchProgress) {
    // The batch holds its tasks (`State::in_hand`) from here until they wait in `waiting`.
    log::info!(
        "boinc: staging a batch of {} task(s) in {} workunit(s)",
        units.iter().map(|u| u.members.len()).sum::<usize>(),
        units.len()
    );
    crate::crash::delay_point("boinc-in-hand");
    let mut staged: Vec<(Vec<TaskId>, StagedTask)> = Vec::new();
    // Names a resumed master took over (`pending:`): they may exist in BOINC already.
    let mut resumed: HashSet<WuName> = HashSet::new();
    for unit in units {
        let Some(first) = unit.members.first() else {
            continue;
        };
        let wu = match unit.wu.clone() {
            Some(w) => Ok(w),
            None if unit.packed => {
                let seq = {
                    let mut st = shared.lock();
                    st.packs += 1;
                    st.packs
                };
                WuName::for_pack(&first.task.job, &shared.run_id, seq)
                    .map_err(|e| InterfaceError::new(e.to_string()))
            }
            None => WuName::for_task(
                &first.task.job,
                &shared.run_id,
                first.task.id.0,
                first.task.attempt,
            )
            .map_err(|e| InterfaceError::new(e.to_string())),
        };
        let tasks: Vec<Arc<PreparedTask>> = unit.members.iter().map(|p| p.task.clone()).collect();
        let result = wu.and_then(|wu| {
            if unit.packed {
                stage_pack(shared, &tasks, wu, unit.wu.is_some())
            } else {
                stage_task(shared, &first.task, wu)
            }
        });
        // Checked under the lock that adds the waiting entries: either `State::break_down`
        // comes later and takes them, or it came first and this unit fails now (nothing
        // would watch for its result). Its staged input stays: a resumed pending name may
        // be an existing workunit's.
        let mut st = shared.lock();
        // Tasks cancelled while the batch held them: they end here, and no workunit is
        // created for a unit left without tasks.
        let (cancelled, members): (Vec<Pending>, Vec<Pending>) = unit
            .members
            .into_iter()
            .partition(|p| st.cancel_in_hand.remove(&p.task.id));
        for p in cancelled.iter().chain(&members) {
            st.in_hand.remove(&p.task.id);
        }
        let result = match (result, st.broken.clone()) {
            (Ok(_), Some(why)) => Err(InterfaceError::new(why)),
            (Ok(_), None) if members.is_empty() => Err(InterfaceError::new("cancelled")),
            (r, _) => r,
        };
        if members.is_empty() && unit.packed {
            st.sizer.job_ended();
        }
        if !cancelled.is_empty() {
            drop(st);
            if members.is_empty() {
                if let Some(wu) = &unit.wu {
                    // A resumed pending workunit may exist in BOINC already.
                    super::cancel_once(shared, wu);
                }
            }
            for p in cancelled {
                p.done.finish(Err(InterfaceError::new(
                    "cancelled before its workunit was created",
                )));
            }
            st = shared.lock();
        }
        if members.is_empty() {
            continue;
        }
        if let (Ok(s), Some(c)) = (&result, unit.wu.as_ref().and_then(|w| st.concluded.get(w))) {
            // A resumed pack that came back while these members were still queued (to
            // others of its members re-attached before them): their outcome is in it, and
            // no workunit is created.
            let c = c.clone();
            let wu = s.wu.clone();
            drop(st);
            for p in members {
                let w = Waiting {
                    wu: wu.clone(),
                    done: Some(p.done),
                    task: p.task.clone(),
                    since: p.since,
                    packed: true,
                    requeues: p.requeues,
                };
                super::spool::finish_late_member(shared, w, c.clone());
            }
            continue;
        }
        match result {
            Ok(s) => {
                let ids: Vec<TaskId> = members.iter().map(|p| p.task.id).collect();
                st.by_wu.entry(s.wu.clone()).or_default().extend(&ids);
                // From the moment a task waits on it, a cancel of the workunit is deferred
                // until create_work has returned (cancelling earlier would find nothing).
                st.creating.insert(s.wu.clone());
                progress.wus.push(s.wu.clone());
                for p in members {
                    st.waiting.insert(
                        p.task.id,
                        Waiting {
                            wu: s.wu.clone(),
                            done: Some(p.done),
                            task: p.task.clone(),
                            since: p.since,
                            packed: unit.packed,
                            requeues: p.requeues,
                        },
                    );
                }
                if unit.wu.is_some() {
                    resumed.insert(s.wu.clone());
                }
                staged.push((ids, s));
            }
            Err(e) => {
                st.failed += members.len() as u64;
                if unit.packed {
                    st.sizer.job_ended();
                }
                drop(st);
                shared.cond.notify_all();
                if let Some(wu) = &unit.wu {
                    // A resumed pending name may exist in BOINC: it would run for nobody.
                    super::cancel_once(shared, wu);
                }
                for p in members {
                    p.done.finish(Err(e.clone()));
                }
            }
        }
    }
    if staged.is_empty() {
        return;
    }
    // The staged files become durable together, before any workunit refers to them; so do
    // the workunits' names (below).
    let sink = crate::guard::lock(&shared.sink).clone();
    let durable = match mw_bundle::sync_filesystem(&shared.layout.download_dir) {
        Err(e) => Err(format!(
            "syncing the staged files in {}: {e}",
            shared.layout.download_dir.display()
        )),
        // Durable before create_work: a master killed during or right after the call finds
        // the names again on resume and re-attaches instead of creating duplicates.
        Ok(()) => match &sink {
            Some(sink) => {
                for (tasks, s) in &staged {
                    for task in tasks {
                        sink.record_handle(*task, &format!("{PENDING_PREFIX}{}", s.wu));
                    }
                }
                if sink.flush() {
                    Ok(())
                } else {
                    Err(
                        "the journal could not record the workunits' names; not creating them"
                            .to_string(),
                    )
                }
            }
            None => Ok(()),
        },
    };
    if let Err(e) = durable {
        let e = InterfaceError::new(e);
        let mut dones = Vec::new();
        {
            let mut st = shared.lock();
            for (tasks, s) in &staged {
                st.by_wu.remove(&s.wu);
                // Not created by this call: no deferred cancel to run (a resumed name is
                // cancelled below).
                st.creating.remove(&s.wu);
                st.cancel_after_create.retain(|w| *w != s.wu);
                let mut ended = false;
                for task in tasks {
                    if let Some(w) = st.waiting.remove(task) {
                        // A pack's run ends with it (else the sizer's probe never ends).
                        ended |= w.packed;
                        dones.extend(w.done);
                        st.failed += 1;
                    }
                }
                if ended {
                    st.sizer.job_ended();
                }
            }
        }
        shared.cond.notify_all();
        for (_, s) in &staged {
            if resumed.contains(&s.wu) {
                // Not created by this master, but maybe by the one before it.
                super::cancel_once(shared, &s.wu);
            }
        }
        for d in dones {
            d.finish(Err(e.clone()));
        }
        return;
    }
    for task in staged.iter().flat_map(|(tasks, _)| tasks) {
        crate::crash::panic_point("boinc-submit", Some(task.0));
    }
    crate::crash::point("boinc-before-create-work");
    let outcome = create_by_name(shared, staged.iter().map(|(_, s)| s).collect());
    crate::crash::point("boinc-after-create-work");
    for (_, s) in &staged {
        if outcome.existed_before.contains(&s.wu) {
            // BOINC had it before this batch (and may have deleted its input after it was
            // done): the input staged now is nobody's. A name that may have been created by
            // this batch's own earlier call keeps its input (see `reconcile`).
            if let Some(p) = &s.fresh_task_file {
                unstage(p);
            }
        }
    }
    if let Some(sink) = &sink {
        // Only tasks that still wait for the workunit: one cancelled or failed meanwhile
        // keeps the handle it has. The spool thread delivers no outcome of a workunit
        // being created, so none can end between this look and the record.
        let records: Vec<(TaskId, &WuName)> = {
            let st = shared.lock();
            staged
                .iter()
                .filter(|(_, s)| outcome.created.contains(&s.wu) || outcome.existed.contains(&s.wu))
                .flat_map(|(tasks, s)| tasks.iter().map(move |t| (*t, &s.wu)))
                .filter(|(t, wu)| st.waiting.get(t).is_some_and(|w| w.wu == **wu))
                .collect()
        };
        for (task, wu) in records {
            sink.record_handle(task, wu.as_str());
        }
    }
    // Created (or known to exist): from now on outcomes are delivered, and cancels run at once.
    let cancel_now: Vec<WuName> = {
        let mut st = shared.lock();
        for (_, s) in &staged {
            st.creating.remove(&s.wu);
        }
        std::mem::take(&mut st.cancel_after_create)
    };
    for wu in &cancel_now {
        // The task was already reported cancelled; this only stops BOINC running it.
        let _ = run_cancel_jobs(&shared.project, wu);
    }
    let mut dones = Vec::new();
    {
        let mut st = shared.lock();
        st.created += outcome.created.len() as u64;
        st.existed += outcome.existed.len() as u64;
        st.batches += outcome.calls;
        if let Some((err, names)) = &outcome.failed {
            for wu in names {
                for task in st.by_wu.remove(wu).unwrap_or_default() {
                    if let Some(w) = st.waiting.remove(&task) {
                        if w.packed {
                            st.sizer.job_ended();
                        }
                        dones.extend(w.done.map(|d| (d, err.clone())));
                    }
                    st.failed += 1;
                }
            }
        }
    }
    if let Some((_, names)) = &outcome.failed {
        // create_work may have created part of them before failing: stop those.
        for wu in names {
            let _ = run_cancel_jobs(&shared.project, wu);
        }
    }
    for (d, e) in dones {
        d.finish(Err(e));
    }
    // Results may have been spooled before the waiting entries existed (the spool thread
    // leaves workunits being created alone): look again.
    wake_watcher(shared);
}

/// What [`create_by_name`] found.
#[derive(Default)]
struct Created {
    created: Vec<WuName>,
    /// Names the project had already: re-attached, not created again.
    existed: Vec<WuName>,
    /// Those of [`existed`](Self::existed) that certainly existed before this batch's first
    /// call (see [`reconcile`]): only their freshly staged inputs may be removed again.
    existed_before: Vec<WuName>,
    failed: Option<(InterfaceError, Vec<WuName>)>,
    calls: u64,
}

/// Creates the workunits, reconciling a partly successful call name by name.
fn create_by_name(shared: &Shared, todo: Vec<&StagedTask>) -> Created {
    reconcile(todo, |lines| run_create_work(shared, lines))
}

/// Runs `create_work` (`run`, given the stdin lines) until every name of `todo` is created
/// or known to exist, reconciling name by name.
///
/// How the real `create_work --stdin` fails (tools/create_work.cpp; reference/boinc-server.md
/// §0.3): it reads the lines in order, inserts them in chunks of about 1 MB of SQL and exits
/// at the first chunk that fails. A duplicate name N at line i therefore means: N existed
/// before this call; the lines after i were not inserted; the lines before i may or may not
/// have been (they were, if an earlier chunk held them). The next call submits the same
/// lines without N, so a name inserted by an earlier call of this batch comes back as a
/// duplicate too, indistinguishable from a name that existed before the batch. Only a name
/// that never stood before the failing line of an earlier call certainly existed before the
/// batch: its input, if this batch staged it afresh, belongs to no workunit of ours and may
/// be removed. For any other duplicate the input must stay (it may be the input of the
/// workunit this batch just created).
fn reconcile(
    mut todo: Vec<&StagedTask>,
    mut run: impl FnMut(&str) -> Result<(), CreateWorkError>,
) -> Created {
    let mut out = Created::default();
    // Names that stood before the failing line of an earlier call: maybe inserted by it.
    let mut maybe_ours: HashSet<WuName> = HashSet::new();
    // Each failing call removes one name: bounded by the batch's length.
    for _ in 0..=todo.len() {
        if todo.is_empty() {
            break;
        }
        let lines: String = todo.iter().map(|s| s.line.as_str()).collect();
        out.calls += 1;
        match run(&lines) {
            Ok(()) => {
                out.created.extend(todo.drain(..).map(|s| s.wu.clone()));
                break;
            }
            Err(CreateWorkError::Duplicate(name)) => {
                match todo.iter().position(|s| s.wu.as_str() == name) {
                    Some(i) => {
                        maybe_ours.extend(todo[..i].iter().map(|s| s.wu.clone()));
                        let s = todo.remove(i);
                        if !maybe_ours.contains(&s.wu) {
                            out.existed_before.push(s.wu.clone());
                        }
                        out.existed.push(s.wu.clone());
                    }
                    None => {
                        let e = InterfaceError::new(format!(
                            "bin/create_work reports a duplicate workunit {name:?} that is not \
                             in this batch"
                        ));
                        out.failed = Some((e, todo.drain(..).map(|s| s.wu.clone()).collect()));
                        break;
                    }
                }
            }
            Err(CreateWorkError::Failed(e)) => {
                out.failed = Some((e, todo.drain(..).map(|s| s.wu.clone()).collect()));
                break;
            }
        }
    }
    out
}

enum CreateWorkError {
    /// `Duplicate entry '<name>' for key 'name'`: that workunit exists already.
    Duplicate(String),
    /// Anything else.
    Failed(InterfaceError),
}

fn run_create_work(shared: &Shared, lines: &str) -> Result<(), CreateWorkError> {
    let args = [
        "--appname",
        shared.app.as_str(),
        "--wu_template",
        shared.wu_template.as_str(),
        "--result_template",
        shared.result_template.as_str(),
        "--stdin",
    ];
    let fail = |m: String| CreateWorkError::Failed(InterfaceError::new(m));
    let mut child = Command::new(shared.project.join("bin/create_work"))
        .args(args)
        .current_dir(&shared.project)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("running bin/create_work: {e}")))?;
    let stdin = child.stdin.take();
    let input = lines.to_string();
    let writer = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            let _ = s.write_all(input.as_bytes());
        }
    });
    let out = wait_bounded(child).map_err(|e| fail(format!("waiting for bin/create_work: {e}")))?;
    let _ = writer.join();
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    if let Some(name) = duplicate_name(&text) {
        return Err(CreateWorkError::Duplicate(name));
    }
    Err(fail(format!(
        "`bin/create_work {}` in {} failed ({}): {}",
        args.join(" "),
        shared.project.display(),
        out.status,
        trim_tool_output(&text)
    )))
}

/// The most of a BOINC tool's stdout and of its stderr that is kept (the rest is read and
/// dropped, so the tool never stalls on a full pipe): a few lines matter.
const MAX_TOOL_OUTPUT: u64 = 1 << 20;

/// `Child::wait_with_output` keeping at most [`MAX_TOOL_OUTPUT`] of each stream.
pub(super) fn wait_bounded(
    mut child: std::process::Child,
) -> std::io::Result<std::process::Output> {
    use std::io::Read;
    fn keep(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut p) = pipe {
                let _ = (&mut p).take(MAX_TOOL_OUTPUT).read_to_end(&mut kept);
                let _ = std::io::copy(&mut p, &mut std::io::sink());
            }
            kept
        })
    }
    let (out, err) = (keep(child.stdout.take()), keep(child.stderr.take()));
    let status = child.wait()?;
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The name in MySQL's `Duplicate entry '<name>' for key 'name'`, if the text has one.
fn duplicate_name(text: &str) -> Option<String> {
    let at = text.find("Duplicate entry '")? + "Duplicate entry '".len();
    let end = text[at..].find('\'')? + at;
    let name = &text[at..end];
    WuName::parse(name).ok().map(|w| w.as_str().to_string())
}

/// A tool's output trimmed to what matters: its short lines (long ones, such as the SQL
/// statement `create_work` prints, are replaced by their size), at most 600 bytes.
pub(super) fn trim_tool_output(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let piece = if line.len() > 200 {
            format!("[{} bytes omitted]", line.len())
        } else {
            line.to_string()
        };
        if !out.is_empty() {
            out.push_str(" / ");
        }
        out.push_str(&piece);
        if out.len() > MAX_ERROR_TEXT {
            mw_bundle::text::clip(&mut out, MAX_ERROR_TEXT);
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn staged(names: &[&str]) -> Vec<StagedTask> {
        names
            .iter()
            .map(|n| StagedTask {
                wu: WuName::parse(n).unwrap(),
                line: format!("--wu_name {n} mw_prog_x {n}_task\n"),
                fresh_task_file: None,
            })
            .collect()
    }

    /// The real `create_work --stdin` (tools/create_work.cpp) against a `name`-unique table:
    /// lines in order, inserted `chunk` at a time; the first chunk holding a name the table
    /// has fails with MySQL's duplicate error and create_work exits, earlier chunks stay.
    fn real_create_work(
        db: &mut BTreeSet<String>,
        ours: &mut BTreeSet<String>,
        chunk: usize,
        lines: &str,
    ) -> Result<(), CreateWorkError> {
        let names: Vec<String> = lines
            .lines()
            .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
            .collect();
        for part in names.chunks(chunk) {
            if let Some(d) = part.iter().find(|n| db.contains(*n)) {
                return Err(CreateWorkError::Duplicate(d.clone()));
            }
            db.extend(part.iter().cloned());
            ours.extend(part.iter().cloned());
        }
        Ok(())
    }

    /// The runaway seen in CI: a resumed master's batch held fresh names before a pending
    /// name that already existed; the first call created the fresh ones (an earlier chunk),
    /// the second reported them as duplicates, and their new inputs were removed.
    #[test]
    fn a_name_created_by_an_earlier_call_of_the_batch_keeps_its_input() {
        let tasks = staged(&["mw_j_r2_2_2", "mw_j_r2_3_2", "mw_j_r1_0_1", "mw_j_r1_1_1"]);
        let mut db: BTreeSet<String> = ["mw_j_r1_1_1".to_string()].into();
        let mut ours = BTreeSet::new();
        let out = reconcile(tasks.iter().collect(), |l| {
            real_create_work(&mut db, &mut ours, 2, l)
        });
        assert!(out.failed.is_none());
        let names = |v: &[WuName]| v.iter().map(|w| w.as_str().to_string()).collect::<Vec<_>>();
        // mw_j_r2_2_2 and mw_j_r2_3_2 were inserted by the first call, then reported as
        // duplicates: re-attached, but not taken as older than the batch.
        assert_eq!(names(&out.existed_before), ["mw_j_r1_1_1"]);
        assert!(names(&out.existed).contains(&"mw_j_r2_2_2".to_string()));
        assert!(ours.contains("mw_j_r2_2_2") && ours.contains("mw_j_r2_3_2"));
    }

    /// Every order, chunk size and set of pre-existing names: every name ends up existing
    /// and accounted for once, and no name this batch inserted is ever taken for one that
    /// existed before it (its input would be removed); the first duplicate is always
    /// recognised as older than the batch.
    #[test]
    fn reconciliation_never_takes_its_own_workunit_for_an_older_one() {
        let all = ["mw_j_r_0_1", "mw_j_r_1_1", "mw_j_r_2_1", "mw_j_r_3_1"];
        let mut orders: Vec<Vec<usize>> = vec![vec![]];
        for _ in 0..all.len() {
            orders = orders
                .into_iter()
                .flat_map(|o| {
                    (0..all.len())
                        .filter(|i| !o.contains(i))
                        .map(|i| {
                            let mut o = o.clone();
                            o.push(i);
                            o
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
        }
        for order in &orders {
            let names: Vec<&str> = order.iter().map(|&i| all[i]).collect();
            let tasks = staged(&names);
            for chunk in 1..=all.len() {
                for mask in 0u32..(1 << all.len()) {
                    let before: BTreeSet<String> = (0..all.len())
                        .filter(|i| mask & (1 << i) != 0)
                        .map(|i| all[i].to_string())
                        .collect();
                    let mut db = before.clone();
                    let mut ours = BTreeSet::new();
                    let out = reconcile(tasks.iter().collect(), |l| {
                        real_create_work(&mut db, &mut ours, chunk, l)
                    });
                    let case = format!("order {names:?}, chunk {chunk}, before {before:?}");
                    assert!(out.failed.is_none(), "{case}");
                    assert_eq!(db.len(), all.len(), "{case}");
                    let mut seen: Vec<&str> = out
                        .created
                        .iter()
                        .chain(&out.existed)
                        .map(WuName::as_str)
                        .collect();
                    seen.sort();
                    assert_eq!(seen, all, "{case}");
                    for w in &out.existed_before {
                        assert!(before.contains(w.as_str()), "{case}: {w}");
                        assert!(!ours.contains(w.as_str()), "{case}: {w}");
                    }
                    let first_dup = names.iter().find(|n| before.contains(**n));
                    if let Some(first) = first_dup {
                        let pos = names.iter().position(|n| n == first).unwrap();
                        // Nothing stood before it in a call: it is known to be older.
                        if pos == 0 || names[..pos].iter().all(|n| before.contains(*n)) {
                            assert!(
                                out.existed_before.iter().any(|w| w.as_str() == *first),
                                "{case}"
                            );
                        }
                    }
                    assert!(out.calls as usize <= all.len() + 1, "{case}");
                }
            }
        }
    }

    #[test]
    fn duplicates_and_trimming() {
        let sql = format!("insert into workunit values {}", "(1,2,3),".repeat(500));
        let text = format!("{sql}\nDuplicate entry 'mw_j_ab_0_1' for key 'name'\n");
        assert_eq!(duplicate_name(&text).as_deref(), Some("mw_j_ab_0_1"));
        assert_eq!(duplicate_name("Duplicate entry 'a b' for"), None);
        let t = trim_tool_output(&format!("create_work: bad stdin argument\n{sql}\n"));
        assert!(t.starts_with("create_work: bad stdin argument / ["), "{t}");
        assert!(t.len() < 100, "{t}");
    }
}
