//! TEST DOUBLE: stands in for HTCondor's daemons, which cannot be installed here.
//! `condor_rm` of the pool double; see mw_tests::condor_double. Never use outside tests.

fn main() -> anyhow::Result<()> {
    mw_tests::condor_double::rm_main()
}
