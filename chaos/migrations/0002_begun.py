from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("chaos", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="Begun",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("job_id", models.BigIntegerField()),
                ("attempt", models.PositiveIntegerField()),
                ("worker_id", models.CharField(max_length=128)),
                ("started_at", models.DateTimeField()),
            ],
            options={
                "indexes": [models.Index(fields=["job_id"], name="chaos_begun_job_idx")],
            },
        ),
    ]
