//! The load tool as a smoke test: each scenario for a few seconds against a real server, judged
//! only by its exactly-once check (every acknowledged message received once, in order, and
//! receipted), never by a timing.

use clap::Parser;
use teachly_load::Cli;

use crate::common::TestApp;
use crate::on_both_backends;

async fn holds(app: &TestApp, scenario: &[&str]) {
    let url = app.url("");
    let mut args = vec!["teachly-load"];
    args.extend_from_slice(scenario);
    args.extend([
        "--url",
        &url,
        "--warmup",
        "500ms",
        "--duration",
        "2s",
        "--settle",
        "10s",
    ]);
    let cli = Cli::try_parse_from(&args).expect("the command line parses");
    let report = teachly_load::run(cli).await.expect("the scenario runs");
    let check = &report.exactly_once;
    assert!(check.holds(), "{scenario:?}: {check:?}\n{:?}", report.notes);
    if scenario[0] != "idle" {
        assert!(check.acknowledged > 0, "{scenario:?} sent nothing");
        assert_eq!(check.received, check.acknowledged, "{scenario:?}");
    }
}

on_both_backends! {
    async fn every_load_scenario_delivers_exactly_once(backend: Backend) {
        let app = TestApp::spawn(backend).await;
        holds(&app, &["pairs", "--pairs", "10", "--window", "8"]).await;
        holds(&app, &["rate", "--pairs", "10", "--rate", "200"]).await;
        holds(&app, &["storm", "--users", "50", "--backlog", "5"]).await;
        holds(&app, &["idle", "--sockets", "100", "--per-user", "5"]).await;
        app.stop().await;
    }
}
