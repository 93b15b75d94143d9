//! TEST DOUBLE: stands in for HTCondor's daemons, which cannot be installed here.
//! `condor_submit` of the pool double; see mw_tests::condor_double. Never use outside tests.

fn main() -> anyhow::Result<()> {
    mw_tests::condor_double::submit_main()
}
