//! Variables: `[variables]` resolved from the environment or defaults, and
//! read by the `vars` guest through Spin's interface and both wasi:config
//! versions.

use hyper::StatusCode;

use crate::support::{App, get, guest};

fn vars_app() -> App {
    App::from_manifest(&format!(
        "spin_manifest_version = 2\n[application]\nname = \"vars\"\n\
         [variables]\ntoken = {{ required = true, secret = true }}\ngreeting = {{ default = \"hello\" }}\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"vars\"\n\
         [component.vars]\nsource = \"{}\"\n\
         variables = {{ message = \"{{{{ greeting }}}}, {{{{ token }}}}!\", fixed = \"42\" }}\n",
        guest("vars").display()
    ))
}

#[tokio::test]
async fn components_read_their_variables_through_every_interface() {
    let app = vars_app();
    let server = app.start_with_env(&[], &[("SPIN_VARIABLE_TOKEN", "s3cret"), ("DORMOUSE_VARIABLE_GREETING", "hi")]);
    for api in ["spin", "config", "config-rc"] {
        let reply = get(&server.url(&format!("/{api}/message"))).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "hi, s3cret!"), "{api}");
        assert_eq!(get(&server.url(&format!("/{api}/fixed"))).await.body, "42", "{api}");
        // Only the component's own variables, not the app's.
        assert_eq!(get(&server.url(&format!("/{api}/token"))).await.status, StatusCode::NOT_FOUND, "{api}");
    }
    assert_eq!(get(&server.url("/config")).await.body, "fixed=42\nmessage=hi, s3cret!\n");
    assert_eq!(get(&server.url("/config-rc")).await.body.lines().count(), 2);
    let reply = get(&server.url("/spin/Bad-Name")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.starts_with("error: invalid-name: `Bad-Name`"), "{}", reply.body);
    let reply = get(&server.url("/spin/nope")).await;
    assert_eq!(reply.body, "error: undefined: component `vars` has no variable `nope`\n");
    assert!(!server.stderr().contains("s3cret"), "a secret's value is never logged");
}

#[test]
fn a_missing_required_variable_stops_start_up_and_names_it() {
    let stderr = vars_app().fails_to_start(&[]);
    assert!(
        stderr.contains(
            "error: variable `token` is required and has no value: set SPIN_VARIABLE_TOKEN (or DORMOUSE_VARIABLE_TOKEN) or give it a `default`"
        ),
        "{stderr}"
    );
}
