//! HTTP client side of the CLI: token exchange, introspection, admin calls.

use super::{AdminCommand, AdminConn, Conn, IntrospectArgs};
use crate::service::JWT_SPIFFE_ASSERTION;
use crate::service::exchange::{GRANT_TOKEN_EXCHANGE, TOKEN_TYPE_JWT};
use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use zeroize::Zeroizing;

/// Reads a credential file; the file's text and the returned secret are wiped on drop.
fn read_secret_file(path: &Path, what: &str) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {what} from {}", path.display()))?,
    );
    let t = Zeroizing::new(text.trim().to_owned());
    if t.is_empty() {
        bail!("{} is empty; it should hold the {what}", path.display());
    }
    Ok(t)
}

fn http_client(ca_file: Option<&PathBuf>) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(ca) = ca_file {
        let pem =
            std::fs::read(ca).with_context(|| format!("cannot read --ca-file {}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-file {} is not PEM", ca.display()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().context("building the HTTP client")
}

/// Sends a request and returns (status, JSON body); connection errors name the URL.
async fn send(req: reqwest::RequestBuilder, url: &str) -> Result<(u16, Value)> {
    let resp = req.send().await.map_err(|e| {
        anyhow!("cannot reach {url}: {e}; is the server running (`tessera serve --dev`) and is --url right?")
    })?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, body))
}

fn server_error(status: u16, body: &Value) -> anyhow::Error {
    let code = body.get("error").and_then(Value::as_str).unwrap_or("error");
    let desc = body
        .get("error_description")
        .and_then(Value::as_str)
        .unwrap_or("");
    let hint = match status {
        401 => " (check the credential: --admin-token-file, --assertion-file or --client-id)",
        403 => " (this identity is not in the server's allowed list)",
        503 => " (the revocation store is unavailable; retry)",
        _ => "",
    };
    anyhow!("server answered {status} {code}: {desc}{hint}")
}

pub async fn exchange(
    conn: &Conn,
    subject_token_file: &Path,
    audience: &str,
    scope: Option<&str>,
) -> Result<ExitCode> {
    let token = read_secret_file(subject_token_file, "subject token")?;
    let url = format!("{}/token", conn.url.trim_end_matches('/'));
    let mut form = vec![
        ("grant_type", GRANT_TOKEN_EXCHANGE),
        ("subject_token", token.as_str()),
        ("subject_token_type", TOKEN_TYPE_JWT),
        ("audience", audience),
    ];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    let client = http_client(conn.ca_file.as_ref())?;
    let (status, body) = send(client.post(&url).form(&form), &url).await?;
    if status != 200 {
        return Err(server_error(status, &body));
    }
    if conn.json {
        println!("{body}");
    } else {
        // The bare token on stdout, so it can be captured: TOKEN=$(tessera token exchange …)
        let t = body
            .get("access_token")
            .and_then(Value::as_str)
            .unwrap_or_default();
        println!("{t}");
        eprintln!(
            "expires_in: {}s  scope: {}",
            body.get("expires_in").and_then(Value::as_u64).unwrap_or(0),
            body.get("scope").and_then(Value::as_str).unwrap_or("-")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn introspect(args: &IntrospectArgs) -> Result<ExitCode> {
    let token = Zeroizing::new(if args.token == "-" {
        let mut s = Zeroizing::new(String::new());
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("reading the token from stdin")?;
        s.trim().to_owned()
    } else {
        args.token.clone()
    });
    let assertion: Zeroizing<String>;
    let url = format!("{}/introspect", args.conn.url.trim_end_matches('/'));
    let client = http_client(args.conn.ca_file.as_ref())?;
    let mut form: Vec<(&str, &str)> = vec![("token", token.as_str())];
    let mut req = client.post(&url);
    match (&args.assertion_file, &args.client_id, &args.secret_file) {
        (Some(f), _, _) => {
            assertion = read_secret_file(f, "JWT-SVID assertion")?;
            form.push(("client_assertion_type", JWT_SPIFFE_ASSERTION));
            form.push(("client_assertion", assertion.as_str()));
        }
        (None, Some(id), Some(secret)) => {
            req = req.basic_auth(
                id,
                Some(read_secret_file(secret, "client secret")?.as_str()),
            );
        }
        _ => bail!(
            "introspection needs a caller credential: --assertion-file FILE (a JWT-SVID) or --client-id ID --secret-file FILE"
        ),
    }
    let (status, body) = send(req.form(&form), &url).await?;
    if status != 200 {
        return Err(server_error(status, &body));
    }
    if args.conn.json {
        println!("{body}");
    } else if let Some(obj) = body.as_object() {
        for (k, v) in obj {
            match v {
                Value::String(s) => println!("{k}: {s}"),
                other => println!("{k}: {other}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn admin_token(conn: &AdminConn) -> Result<Zeroizing<String>> {
    read_secret_file(&conn.admin_token_file, "admin token").map_err(|e| {
        anyhow!("{e}; pass --admin-token-file (dev mode writes ./tessera-data/admin-token)")
    })
}

async fn admin_call(
    conn: &AdminConn,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let token = admin_token(conn)?;
    let url = format!("{}{path}", conn.url.trim_end_matches('/'));
    let client = http_client(conn.ca_file.as_ref())?;
    let mut req = client.request(method, &url).bearer_auth(token.as_str());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let (status, body) = send(req, &url).await?;
    if !(200..300).contains(&status) {
        return Err(server_error(status, &body));
    }
    Ok((status, body))
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            ser.append_pair(k, v);
        }
    }
    let q = ser.finish();
    if q.is_empty() { q } else { format!("?{q}") }
}

fn print_items(body: &Value, json: bool, columns: &[&str]) {
    if json {
        println!("{body}");
        return;
    }
    let items = body
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if items.is_empty() {
        println!("(none)");
    }
    for item in items {
        let line: Vec<String> = columns
            .iter()
            .map(|c| match item.get(*c) {
                Some(Value::String(s)) => format!("{c}={s}"),
                Some(Value::Null) | None => format!("{c}=-"),
                Some(v) => format!("{c}={v}"),
            })
            .collect();
        println!("{}", line.join("  "));
    }
}

pub async fn admin(cmd: AdminCommand) -> Result<ExitCode> {
    use reqwest::Method;
    match cmd {
        AdminCommand::Revoke {
            jti,
            subject,
            kid,
            reason,
            block_new,
            conn,
        } => {
            let mut body = serde_json::json!({"reason": reason});
            for (k, v) in [
                ("jti", jti),
                ("subject", subject),
                ("kid", kid),
                ("block_new", block_new),
            ] {
                if let (Some(v), Some(m)) = (v, body.as_object_mut()) {
                    m.insert(k.into(), v.into());
                }
            }
            let (_, rec) =
                admin_call(&conn, Method::POST, "/admin/v1/revocations", Some(body)).await?;
            if conn.json {
                println!("{rec}");
            } else {
                println!(
                    "revoked {} {} (id {}, until {})",
                    rec["kind"].as_str().unwrap_or("?"),
                    rec["value"].as_str().unwrap_or("?"),
                    rec["id"].as_str().unwrap_or("?"),
                    rec["expires_at"].as_str().unwrap_or("?")
                );
            }
        }
        AdminCommand::Revocations { kind, conn } => {
            let (_, body) = admin_call(
                &conn,
                Method::GET,
                &format!("/admin/v1/revocations{}", query(&[("kind", kind)])),
                None,
            )
            .await?;
            print_items(
                &body,
                conn.json,
                &[
                    "id",
                    "kind",
                    "value",
                    "reason",
                    "actor",
                    "created_at",
                    "expires_at",
                ],
            );
        }
        AdminCommand::Lift { id, conn } => {
            let path = format!(
                "/admin/v1/revocations/{}",
                form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
            );
            admin_call(&conn, Method::DELETE, &path, None).await?;
            println!("lifted {id}");
        }
        AdminCommand::Tokens {
            subject,
            audience,
            conn,
        } => {
            let q = query(&[("subject", subject), ("audience", audience)]);
            let (_, body) =
                admin_call(&conn, Method::GET, &format!("/admin/v1/tokens{q}"), None).await?;
            print_items(
                &body,
                conn.json,
                &["jti", "sub", "aud", "scope", "iat", "exp"],
            );
        }
        AdminCommand::RotateKeys { conn } => {
            let (_, body) = admin_call(&conn, Method::POST, "/admin/v1/keys/rotate", None).await?;
            if conn.json {
                println!("{body}");
            } else {
                for k in body["keys"].as_array().cloned().unwrap_or_default() {
                    println!(
                        "{}  {}  {}",
                        k["state"].as_str().unwrap_or("?"),
                        k["kid"].as_str().unwrap_or("?"),
                        k["alg"].as_str().unwrap_or("?")
                    );
                }
            }
        }
        AdminCommand::ReloadPolicy { conn } => {
            let (_, body) =
                admin_call(&conn, Method::POST, "/admin/v1/policy/reload", None).await?;
            if conn.json {
                println!("{body}");
            } else {
                println!("reloaded: {} rule(s)", body["rules"]);
                for f in body["bundles_failed"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    println!(
                        "bundle kept at last good version: {} ({})",
                        f["trust_domain"], f["error"]
                    );
                }
            }
        }
        AdminCommand::Audit {
            subject,
            outcome,
            limit,
            conn,
        } => {
            let q = query(&[
                ("subject", subject),
                ("outcome", outcome),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            let (_, body) =
                admin_call(&conn, Method::GET, &format!("/admin/v1/audit{q}"), None).await?;
            if conn.json {
                println!("{body}");
            } else {
                for ev in body["items"].as_array().cloned().unwrap_or_default() {
                    println!("{ev}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
