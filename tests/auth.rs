//! Authentication: every tenant-runtime route refuses a missing or wrong
//! credential, another tenant is 404, and rotation has an overlap.

mod common;
use std::time::Duration;

use common::*;

/// Every tenant-runtime route of the router, with sample path parameters.
fn tenant_routes(tenant: &str) -> Vec<(reqwest::Method, String)> {
    hermes_tenantd::api::route_list()
        .into_iter()
        .filter(|(_, p)| p.starts_with("/v1/tenant-runtime/"))
        .map(|(m, p)| {
            let mut out = String::new();
            let mut rest = p.as_str();
            while let Some(start) = rest.find('{') {
                out.push_str(&rest[..start]);
                let end = rest[start..]
                    .find('}')
                    .map(|e| start + e)
                    .expect("closing brace");
                let name = &rest[start + 1..end];
                out.push_str(if name == "tenant_id" { tenant } else { "1" });
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            (m.parse().expect("method"), out)
        })
        .collect()
}

#[tokio::test]
async fn every_tenant_route_refuses_missing_and_wrong_credentials() {
    let d = TestDaemon::start().await;
    let routes = tenant_routes(TENANT);
    assert!(routes.len() >= 10, "route list looks too short: {routes:?}");
    for (method, path) in routes {
        let url = d.url(&path);
        let none = d
            .client
            .request(method.clone(), &url)
            .send()
            .await
            .expect("send");
        let v = expect_problem(none, 401, "unauthenticated").await;
        assert!(!v.to_string().contains(TOKEN));
        let wrong = d
            .client
            .request(method.clone(), &url)
            .bearer_auth("wrong-credential-0123456789abcdef")
            .send()
            .await
            .expect("send");
        expect_problem(wrong, 401, "unauthenticated").await;
        let basic = d
            .client
            .request(method.clone(), &url)
            .header("authorization", format!("Basic {TOKEN}"))
            .send()
            .await
            .expect("send");
        expect_problem(basic, 401, "unauthenticated").await;
    }
    let logs = d.logs().join("\n");
    assert!(
        !logs.contains("wrong-credential"),
        "a token reached the log"
    );
}

#[tokio::test]
async fn another_tenant_is_not_found_even_with_the_credential() {
    let d = TestDaemon::start().await;
    for (method, path) in tenant_routes("someone-else") {
        let r = d
            .client
            .request(method, d.url(&path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("send");
        expect_problem(r, 404, "not_found").await;
    }
}

#[tokio::test]
async fn rotated_credential_keeps_old_one_during_overlap_only() {
    let d = TestDaemon::start_with(Options {
        config_extra: "".into(),
        env: vec![("HERMES_TENANTD_AUTH__ROTATION_OVERLAP".into(), "2s".into())],
        dir: None,
    })
    .await;
    let new_token = "rotated-credential-abcdef0123456789";
    // Rotate the way an operator would: write a new file and rename it over.
    let tmp = d.dir.join("credential.new");
    write_private(&tmp, new_token);
    std::fs::rename(&tmp, d.dir.join("credential")).expect("rename");

    let status = |token: &'static str| {
        let req = d.client.get(d.tenant_url("/version")).bearer_auth(token);
        async move { req.send().await.expect("send").status().as_u16() }
    };
    // The new credential is accepted once the change is seen.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status(new_token).await != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "new credential never accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status(TOKEN).await,
        200,
        "old credential refused during the overlap"
    );
    // After the overlap only the new one works.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status(TOKEN).await != 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "old credential still accepted after overlap"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(new_token).await, 200);
}

/// The overlap is not lost when the daemon restarts in the middle of it,
/// and a credential replaced while the daemon was down gets one too.
#[tokio::test]
async fn the_overlap_survives_daemon_restarts_and_rotation_while_down() {
    let dir = tempfile::tempdir().expect("tmp");
    let start = || {
        TestDaemon::start_with(Options {
            config_extra: "".into(),
            env: vec![("HERMES_TENANTD_AUTH__ROTATION_OVERLAP".into(), "10m".into())],
            dir: Some(dir.path().to_path_buf()),
        })
    };
    let status = |d: &TestDaemon, token: &str| {
        let req = d.client.get(d.tenant_url("/version")).bearer_auth(token);
        async move { req.send().await.expect("send").status().as_u16() }
    };
    let rotate = |token: &str| {
        let tmp = dir.path().join("credential.new");
        write_private(&tmp, token);
        std::fs::rename(&tmp, dir.path().join("credential")).expect("rename");
    };
    let second = "second-credential-abcdef0123456789";
    let third = "third-credential-abcdef0123456789";

    let mut d = start().await;
    rotate(second);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status(&d, second).await != 200 {
        assert!(std::time::Instant::now() < deadline, "rotation never seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(d.terminate().success());
    drop(d);

    // Restarted during the overlap: the first credential still works.
    let mut d = start().await;
    assert_eq!(status(&d, second).await, 200);
    assert_eq!(status(&d, TOKEN).await, 200, "overlap lost at restart");
    assert!(d.terminate().success());
    drop(d);

    // Replaced while down: the one in force before keeps working for the
    // overlap; the one before that is the previous no more.
    rotate(third);
    let d = start().await;
    assert_eq!(status(&d, third).await, 200);
    assert_eq!(
        status(&d, second).await,
        200,
        "no overlap for a rotation while down"
    );
    assert_eq!(status(&d, TOKEN).await, 401);
    let state = std::fs::read_to_string(d.data_dir().join("credential.state")).expect("state");
    for secret in [TOKEN, second, third] {
        assert!(!state.contains(secret), "a credential in the state file");
    }
    for line in d.logs() {
        for secret in [TOKEN, second, third] {
            assert!(!line.contains(secret), "a credential in the log: {line}");
        }
    }
}

#[tokio::test]
async fn a_world_readable_credential_file_stops_the_daemon_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tmp");
    let cred = dir.path().join("credential");
    std::fs::write(&cred, TOKEN).expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = std::process::Command::new(binary())
        .args(["run", "--dev"])
        .env("HERMES_TENANTD_AUTH__CREDENTIAL_FILE", &cred)
        .env("HERMES_TENANTD_DATA_DIR", dir.path().join("data"))
        .env("HERMES_TENANTD_LISTEN__ADDR", "127.0.0.1:0")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(TOKEN), "{err}");
}
