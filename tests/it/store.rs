//! The `Store` API on its own, on both databases: what the message path relies on from it.

use std::time::Duration;

use teachlyd::{
    domain::{NewMessage, SessionId, now},
    store::{Family, Identity, Rotation, SessionState, Store, tokens::NewRefreshToken},
};

use crate::common::TestDb;
use crate::on_both_backends;

async fn open(db: &TestDb) -> Store {
    let store = Store::connect(&db.url, 2, Duration::from_millis(500))
        .await
        .expect("the store opens");
    store.migrate().await.expect("migrations apply");
    store
}

async fn user(store: &Store, name: &str) -> i64 {
    let google_id = format!("dev:{name}");
    let identity = Identity {
        google_id: &google_id,
        name: Some(name),
        avatar_url: None,
        email: None,
    };
    store.upsert_user(&identity).await.unwrap().id
}

fn message(from: i64, to: i64, text: &str, client_id: Option<&str>) -> NewMessage {
    NewMessage {
        from_id: from,
        to_id: to,
        content: text.into(),
        client_id: client_id.map(str::to_owned),
        timestamp: now(),
    }
}

/// Stores a refresh token of `family` for `user`, valid for a day.
async fn token(store: &Store, user: i64, family: &str, hash: &str) {
    let token = NewRefreshToken {
        hash,
        family_id: family,
        user_id: user,
        expires_at: now() + Duration::from_secs(86_400),
    };
    store.insert_refresh_token(&token).await.unwrap();
}

on_both_backends! {
    async fn sessions_end_by_family_and_say_which_one_ended(backend: Backend) {
        let db = TestDb::create(backend).await;
        let store = open(&db).await;
        let (alice, bob) = (user(&store, "alice").await, user(&store, "bob").await);
        let (phone, laptop) = (SessionId::from("phone"), SessionId::from("laptop"));
        token(&store, alice, "phone", "h-phone").await;
        token(&store, alice, "laptop", "h-laptop").await;
        assert_eq!(store.session_state(alice, &phone).await.unwrap(), SessionState::Live);
        assert_eq!(store.session_state(bob, &phone).await.unwrap(), SessionState::Ended, "not bob's session");
        assert_eq!(store.session_state(alice, &"nothing".into()).await.unwrap(), SessionState::Ended);
        assert_eq!(store.session_state(999_999, &phone).await.unwrap(), SessionState::UnknownUser);

        // A rotation names its family; a reuse after it revokes that family, and says so.
        let grace = Duration::ZERO;
        let rotated = store.rotate_refresh_token("h-phone", "h-phone-2", now() + Duration::from_secs(60), now(), grace);
        let family = Family { user_id: alice, family_id: phone.clone() };
        assert_eq!(rotated.await.unwrap(), Rotation::Rotated(family.clone()));
        let reused = store.rotate_refresh_token("h-phone", "h-phone-3", now() + Duration::from_secs(60), now(), grace);
        assert_eq!(reused.await.unwrap(), Rotation::Reused(family.clone()));
        assert_eq!(store.session_state(alice, &phone).await.unwrap(), SessionState::Ended);
        assert_eq!(store.session_state(alice, &laptop).await.unwrap(), SessionState::Live);

        // Logout names the family of any of its tokens, revoked before or now; an unknown token none.
        assert_eq!(store.revoke_refresh_family("h-phone-2", now()).await.unwrap(), Some(family));
        assert_eq!(store.revoke_refresh_family("h-unknown", now()).await.unwrap(), None);
        token(&store, alice, "tablet", "h-tablet").await;
        token(&store, alice, "tablet", "h-tablet-2").await;
        let revoked = store.revoke_user_refresh_tokens(alice, now()).await.unwrap();
        assert_eq!(revoked.tokens, 3, "laptop's one and tablet's two; phone's were revoked already");
        assert_eq!(revoked.families, vec![laptop.clone(), SessionId::from("tablet")]);
        assert_eq!(store.session_state(alice, &laptop).await.unwrap(), SessionState::Ended);
        store.close().await;
    }

    async fn a_conversation_is_shared_either_way(backend: Backend) {
        let db = TestDb::create(backend).await;
        let store = open(&db).await;
        let (alice, bob, carol) = (user(&store, "alice").await, user(&store, "bob").await, user(&store, "carol").await);
        assert!(!store.share_conversation(alice, bob).await.unwrap());
        store.insert_messages(&[message(bob, alice, "hi", None)]).await.unwrap();
        assert!(store.share_conversation(alice, bob).await.unwrap());
        assert!(store.share_conversation(bob, alice).await.unwrap());
        assert!(!store.share_conversation(alice, carol).await.unwrap());
        assert!(!store.share_conversation(bob, carol).await.unwrap());
        store.close().await;
    }

    async fn a_repeated_client_id_is_an_outcome_not_an_error(backend: Backend) {
        let db = TestDb::create(backend).await;
        let store = open(&db).await;
        let (alice, bob) = (user(&store, "alice").await, user(&store, "bob").await);
        let first = store.insert_messages(&[message(alice, bob, "one", Some("k"))]).await.unwrap();
        assert!(first[0].is_some());
        let batch = [
            message(alice, bob, "one again", Some("k")),
            message(alice, bob, "two", Some("k2")),
            message(bob, alice, "three", Some("k")),
        ];
        let ids = store.insert_messages(&batch).await.unwrap();
        assert_eq!(ids[0], None, "alice's k is already stored");
        assert!(ids[1].is_some() && ids[2].is_some(), "the rest of the batch is stored: {ids:?}");
        let stored = store.message_by_client_id(alice, "k").await.unwrap().unwrap();
        assert_eq!((stored.id, stored.content.as_str()), (first[0].unwrap(), "one"));
        store.close().await;
    }

    async fn a_row_that_breaks_a_constraint_fails_its_whole_call(backend: Backend) {
        let db = TestDb::create(backend).await;
        let store = open(&db).await;
        let (alice, bob) = (user(&store, "alice").await, user(&store, "bob").await);
        let batch = [message(alice, bob, "fine", None), message(alice, 987_654, "to nobody", None)];
        let error = store.insert_messages(&batch).await.unwrap_err();
        assert!(!error.is_unavailable(), "a constraint is about a row, not the database: {error}");
        assert!(store.undelivered(bob, 0, 10).await.unwrap().is_empty(), "nothing of the call is stored");
        store.close().await;
    }

    async fn seeing_a_message_delivers_it_once(backend: Backend) {
        let db = TestDb::create(backend).await;
        let store = open(&db).await;
        let (alice, bob) = (user(&store, "alice").await, user(&store, "bob").await);
        let batch: Vec<_> = (0..3).map(|n| message(alice, bob, &format!("m{n}"), None)).collect();
        let ids: Vec<i64> = store.insert_messages(&batch).await.unwrap().into_iter().map(Option::unwrap).collect();
        assert_eq!(store.mark_delivered(&[ids[0]], now()).await.unwrap().len(), 1);

        let seen = store.mark_seen(bob, ids[1], now()).await.unwrap().expect("bob's message");
        assert!(seen.delivered_now, "seen before it was delivered");
        assert_eq!(store.mark_seen(bob, ids[1], now()).await.unwrap(), None, "seen once");
        assert_eq!(store.mark_seen(alice, ids[2], now()).await.unwrap(), None, "only the recipient");

        let seen = store.mark_seen_up_to(bob, alice, ids[2], now()).await.unwrap();
        let delivered_now: Vec<(i64, bool)> = seen.iter().map(|s| (s.receipt.id, s.delivered_now)).collect();
        assert_eq!(delivered_now, [(ids[0], false), (ids[2], true)], "ids[1] was seen already");
        assert!(store.mark_delivered(&ids, now()).await.unwrap().is_empty(), "nothing is delivered twice");
        assert!(store.undelivered(bob, 0, 10).await.unwrap().is_empty());
        for id in ids {
            let message = store.message(id).await.unwrap().unwrap();
            assert!(message.delivered_at.is_some() && message.seen_at.is_some(), "{message:?}");
            assert!(message.delivered_at <= message.seen_at);
        }
        store.close().await;
    }

    async fn a_locked_database_is_unavailable_not_a_failed_row(backend: Backend) {
        let db = TestDb::create(backend).await;
        let store = open(&db).await;
        let mut lane = store.lane(Duration::from_millis(500)).await.unwrap();
        let (alice, bob) = (user(&store, "alice").await, user(&store, "bob").await);
        let lock = db.lock_writes().await;
        let started = std::time::Instant::now();
        let error = lane.commit(&[message(alice, bob, "held", None)], &[], now()).await.unwrap_err();
        assert!(error.is_unavailable(), "{error}");
        assert!(started.elapsed() < Duration::from_secs(3), "the database cancelled it: {:?}", started.elapsed());
        lock.close().await;
        assert!(lane.commit(&[message(alice, bob, "after", None)], &[], now()).await.unwrap().ids[0].is_some());
        store.close().await;
    }

    async fn a_lane_commits_messages_and_deliveries_together_in_batch_order(backend: Backend) {
        let db = TestDb::create(backend).await;
        let store = open(&db).await;
        let mut lane = store.lane(Duration::from_secs(5)).await.unwrap();
        let (alice, bob) = (user(&store, "alice").await, user(&store, "bob").await);
        let first = lane.commit(&[message(alice, bob, "first", Some("a1"))], &[], now()).await.unwrap();
        let first_id = first.ids[0].expect("stored");
        assert!(first.receipts.is_empty());
        let batch: Vec<_> = (0..40)
            .map(|n| match n {
                7 => message(alice, bob, "a retry", Some("a1")),
                n if n % 2 == 0 => message(alice, bob, &format!("m{n}"), Some(&format!("a{}", n + 10))),
                n => message(bob, alice, &format!("m{n}"), None),
            })
            .collect();
        let committed = lane.commit(&batch, &[first_id, first_id, 987_654], now()).await.unwrap();
        assert_eq!(committed.ids.len(), batch.len(), "one answer per message");
        assert_eq!(committed.ids[7], None, "a1 was stored before");
        let ids: Vec<i64> = committed.ids.iter().flatten().copied().collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow in batch order: {ids:?}");
        for (message, id) in batch.iter().zip(&committed.ids) {
            if let Some(id) = id {
                assert_eq!(store.message(*id).await.unwrap().unwrap().content, message.content);
            }
        }
        let receipts: Vec<(i64, i64, i64)> = committed.receipts.iter().map(|r| (r.id, r.from_id, r.to_id)).collect();
        assert_eq!(receipts, [(first_id, alice, bob)], "once, and only for a stored message");
        let again = lane.commit(&[message(alice, bob, "later", None)], &[first_id], now()).await.unwrap();
        assert!(again.receipts.is_empty(), "a message is delivered once");
        store.close().await;
    }

    async fn a_lane_given_up_mid_commit_stores_nothing_and_goes_on(backend: Backend) {
        let db = TestDb::create(backend).await;
        let store = open(&db).await;
        let mut lane = store.lane(Duration::from_secs(5)).await.unwrap();
        let (alice, bob) = (user(&store, "alice").await, user(&store, "bob").await);
        assert!(lane.commit(&[message(alice, bob, "warm", None)], &[], now()).await.is_ok());
        let lock = db.lock_writes().await;
        let given_up = tokio::time::timeout(
            Duration::from_millis(300),
            lane.commit(&[message(alice, bob, "given up", Some("g"))], &[], now()),
        )
        .await;
        assert!(given_up.is_err(), "the commit waited for the lock: {given_up:?}");
        lock.close().await;
        let after = lane.commit(&[message(alice, bob, "after", Some("h"))], &[], now()).await.unwrap();
        assert!(after.ids[0].is_some(), "the lane commits again on a sound connection");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(store.message_by_client_id(alice, "g").await.unwrap(), None, "never stored later");
        store.close().await;
    }
}

/// Migration 3 moves PostgreSQL's delivery queue out of `messages`: what was undelivered before it
/// still comes, in order, and no index on `messages` names `delivered_at` any more (an index that
/// does makes every delivery rewrite the row into all of them instead of updating it in place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_3_keeps_what_was_undelivered_and_delivery_off_the_indexes() {
    let db = TestDb::create(crate::common::Backend::Postgres).await;
    let store = Store::connect(&db.url, 2, Duration::from_secs(5))
        .await
        .unwrap();
    let Store::Postgres(pool) = &store else {
        unreachable!("a PostgreSQL test database")
    };
    sqlx::migrate!("./migrations/postgres")
        .run_to(2, pool)
        .await
        .expect("migrations 1 and 2 apply");
    let (alice, bob) = (user(&store, "alice").await, user(&store, "bob").await);
    let mut before = Vec::new();
    for (n, delivered) in [false, true, false, false, true].into_iter().enumerate() {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO messages (from_id, to_id, content, delivered_at) \
             VALUES ($1, $2, $3, CASE WHEN $4 THEN now() END) RETURNING id",
        )
        .bind(alice)
        .bind(bob)
        .bind(format!("before {n}"))
        .bind(delivered)
        .fetch_one(pool)
        .await
        .unwrap();
        if !delivered {
            before.push(id);
        }
    }
    store.migrate().await.expect("migration 3 applies");
    let ids = |messages: Vec<teachlyd::domain::Message>| {
        messages.into_iter().map(|m| m.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(store.undelivered(bob, 0, 10).await.unwrap()), before);
    assert_eq!(
        ids(store.undelivered(bob, before[0], 10).await.unwrap()),
        before[1..]
    );

    let mut lane = store.lane(Duration::from_secs(5)).await.unwrap();
    let after = lane
        .commit(&[message(alice, bob, "after", None)], &[before[1]], now())
        .await
        .unwrap();
    assert_eq!(after.receipts.len(), 1);
    let expected = [before[0], before[2], after.ids[0].unwrap()];
    assert_eq!(ids(store.undelivered(bob, 0, 10).await.unwrap()), expected);
    store
        .mark_seen(bob, before[0], now())
        .await
        .unwrap()
        .expect("bob's message");
    assert_eq!(
        ids(store.undelivered(bob, 0, 10).await.unwrap()),
        expected[1..],
        "seen is delivered"
    );

    let indexes: Vec<String> =
        sqlx::query_scalar("SELECT indexdef FROM pg_indexes WHERE tablename = 'messages' AND indexdef LIKE '%delivered_at%'")
            .fetch_all(pool)
            .await
            .unwrap();
    assert!(indexes.is_empty(), "{indexes:?}");
    store.close().await;
}
