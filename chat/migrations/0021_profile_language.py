from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0020_chunk_vectors"),
    ]

    operations = [
        migrations.AddField(
            model_name="profile",
            name="language",
            field=models.CharField(blank=True, default="", max_length=8),
        ),
    ]
