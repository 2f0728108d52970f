def test_admin_creates_ticket_and_agent_gets_it(client, factory, admin_headers):
    agent = factory.user("alice")
    created = client.post(
        "/api/admin/tickets/", json={"title": "printer on fire"}, headers=admin_headers
    )
    assert created.status_code == 201
    got = client.get("/api/agent/tickets/assign/", headers=factory.headers(agent))
    assert got.status_code == 200
    assert [t["id"] for t in got.json["tickets"]] == [created.json["id"]]
    assert got.json["tickets"][0]["agent_id"] == agent.id


def test_second_app_in_same_process(client, factory, admin_headers):
    agent = factory.user("bob")
    assert client.get("/api/agent/tickets/", headers=factory.headers(agent)).json == {
        "tickets": [],
        "capacity": 15,
    }
